// Test and benchmark support, not production: the store answers fan-out with SQL
// (RampartStore/SQLiteStore.swift); this in-memory index is the oracle its tests compare with
// (StoreTests.fanOutAgreesWithTheCloudIndex) and what `rampart-bench engine` measures at a
// million instances. Neither rampart nor rampartd links it.

/// Per-host counts for one group, compact and O(1) to update: (host, count) pairs packed in one
/// array, plus a position index once the array is long enough that a linear search would cost.
/// With a million groups most of these hold a handful of hosts, so one small allocation each.
struct HostCounts: Sendable {
    /// `host << 32 | count`, count > 0, unordered.
    private(set) var packed: [UInt64] = []
    private var position: [Int32: Int32]?

    private static let indexAbove = 16

    private func find(_ h: Int32) -> Int? {
        if let position { return position[h].map(Int.init) }
        return packed.firstIndex { Int32(truncatingIfNeeded: $0 >> 32) == h }
    }

    mutating func add(_ h: Int32, _ n: Int32) {
        guard n != 0 else { return }
        if let i = find(h) {
            let c = Int64(packed[i] & 0xffff_ffff) + Int64(n)
            precondition(c >= 0, "host count below zero")
            if c == 0 { removeAt(i) } else { packed[i] = UInt64(UInt32(bitPattern: h)) << 32 | UInt64(c) }
            return
        }
        precondition(n > 0, "host count below zero")
        packed.append(UInt64(UInt32(bitPattern: h)) << 32 | UInt64(n))
        if position != nil {
            position![h] = Int32(packed.count - 1)
        } else if packed.count > Self.indexAbove {
            var p: [Int32: Int32] = [:]
            for (i, e) in packed.enumerated() { p[Int32(truncatingIfNeeded: e >> 32)] = Int32(i) }
            position = p
        }
    }

    private mutating func removeAt(_ i: Int) {
        let h = Int32(truncatingIfNeeded: packed[i] >> 32)
        let last = packed.count - 1
        if i != last {
            packed[i] = packed[last]
            position?[Int32(truncatingIfNeeded: packed[i] >> 32)] = Int32(i)
        }
        packed.removeLast()
        position?[h] = nil
    }

    var count: Int { packed.count }

    func forEachHost(_ body: (Int32) -> Void) {
        for e in packed { body(Int32(truncatingIfNeeded: e >> 32)) }
    }

    func count(of h: Int32) -> Int { find(h).map { Int(packed[$0] & 0xffff_ffff) } ?? 0 }
}

/// A list of ids with O(1) insertion and removal: an unordered array, plus a position index once
/// the list is long enough that a linear search would cost (a default group with 100,000 members,
/// a host with hundreds of instances). Most lists are short and stay a single small array.
struct IDList: Sendable {
    private(set) var items: [Int32] = []
    private var position: [Int32: Int32]?

    private static let indexAbove = 16

    mutating func insert(_ x: Int32) {
        items.append(x)
        if position != nil {
            position![x] = Int32(items.count - 1)
        } else if items.count > Self.indexAbove {
            var p: [Int32: Int32] = [:]
            for (i, e) in items.enumerated() { p[e] = Int32(i) }
            position = p
        }
    }

    /// Removes `x` if present (ids are unique in each list).
    mutating func remove(_ x: Int32) {
        let k: Int
        if let position {
            guard let i = position[x] else { return }
            k = Int(i)
        } else {
            guard let i = items.lastIndex(of: x) else { return }
            k = i
        }
        let last = items.count - 1
        if k != last {
            items[k] = items[last]
            position?[items[k]] = Int32(k)
        }
        items.removeLast()
        position?[x] = nil
    }
}

/// The cloud-wide fan-out index: which hosts must receive each refresh call for a group.
///
/// - rules refresh of G: hosts with a member of G (`memberHosts[G]`);
/// - members refresh of G: hosts with an instance whose rules reference G, i.e. hosts with a
///   member of some group R whose rules reference G (`referrerHosts[G]`).
///
/// Both are kept as per-host counts, updated on every change, so a query walks only its answer
/// (no union over referencing groups, no scan) and stays correct under any sequence of edits.
/// It also answers group → members, group → referencing groups and host → instances, which is
/// what a controller needs to build each host's document and each refresh payload.
/// Ids are interned to Int32 and per-object data lives in arrays indexed by them, which keeps a
/// million groups and a million instances within a few hundred MB.
public struct CloudIndex: Sendable {
    private var groupIndex: [String: Int32] = [:]
    private var groupNames: [String] = []
    private var hostIndex: [String: Int32] = [:]
    private var hostNames: [String] = []
    private var instanceIndex: [String: Int32] = [:]
    private var instanceNames: [String] = []

    /// Per instance: host (-1 when removed) and groups.
    private var instanceHost: [Int32] = []
    private var instanceGroups: [[Int32]] = []
    /// Per group: the groups its rules reference (deduplicated).
    private var references: [[Int32]] = []
    /// Per group: its member instances; per group: the groups whose rules reference it;
    /// per host: its instances.
    private var groupMembers: [IDList] = []
    private var referrers: [IDList] = []
    private var hostInstances: [IDList] = []
    /// Per group: host → number of its members there.
    private var memberHosts: [HostCounts] = []
    /// Per group: host → Σ over groups R referencing it of R's members there.
    private var referrerHosts: [HostCounts] = []

    public init() {}

    /// Number of groups, instances and hosts known.
    public var counts: (groups: Int, instances: Int, hosts: Int) { (groupNames.count, instanceIndex.count, hostNames.count) }

    /// Reserves room for a cloud of the given size (avoids regrowth while building).
    public mutating func reserve(groups: Int, instances: Int, hosts: Int) {
        groupIndex.reserveCapacity(groups); groupNames.reserveCapacity(groups)
        references.reserveCapacity(groups); memberHosts.reserveCapacity(groups); referrerHosts.reserveCapacity(groups)
        groupMembers.reserveCapacity(groups); referrers.reserveCapacity(groups)
        instanceIndex.reserveCapacity(instances); instanceHost.reserveCapacity(instances); instanceGroups.reserveCapacity(instances)
        instanceNames.reserveCapacity(instances)
        hostIndex.reserveCapacity(hosts); hostNames.reserveCapacity(hosts); hostInstances.reserveCapacity(hosts)
    }

    private mutating func group(_ name: String) -> Int32 {
        if let g = groupIndex[name] { return g }
        let g = Int32(groupNames.count)
        groupIndex[name] = g
        groupNames.append(name)
        references.append([])
        groupMembers.append(IDList())
        referrers.append(IDList())
        memberHosts.append(HostCounts())
        referrerHosts.append(HostCounts())
        return g
    }

    private mutating func host(_ name: String) -> Int32 {
        if let h = hostIndex[name] { return h }
        let h = Int32(hostNames.count)
        hostIndex[name] = h
        hostNames.append(name)
        hostInstances.append(IDList())
        return h
    }

    /// Sets the groups that `group`'s rules reference as a remote `group` (replacing the old list).
    /// Cost: (old + new references) × hosts where `group` has members.
    public mutating func setReferences(of groupName: String, to referenced: [String]) {
        let r = group(groupName)
        var new: [Int32] = []
        var seen = Set<Int32>()
        for name in referenced {
            let g = group(name)
            if seen.insert(g).inserted { new.append(g) }
        }
        let old = references[Int(r)]
        if old == new { return }
        let hosts = memberHosts[Int(r)].packed
        for g in old {
            referrers[Int(g)].remove(r)
            for e in hosts { referrerHosts[Int(g)].add(Int32(truncatingIfNeeded: e >> 32), -Int32(e & 0xffff_ffff)) }
        }
        for g in new {
            referrers[Int(g)].insert(r)
            for e in hosts { referrerHosts[Int(g)].add(Int32(truncatingIfNeeded: e >> 32), Int32(e & 0xffff_ffff)) }
        }
        references[Int(r)] = new
    }

    /// Adds or updates an instance. Cost: its groups × their references.
    public mutating func setInstance(_ id: String, host hostName: String, groups: [String]) {
        let h = host(hostName)
        var gs: [Int32] = []
        for name in groups {
            let g = group(name)
            if !gs.contains(g) { gs.append(g) }
        }
        let i: Int32
        if let existing = instanceIndex[id] {
            i = existing
            detach(i)
        } else {
            i = Int32(instanceHost.count)
            instanceIndex[id] = i
            instanceHost.append(-1)
            instanceGroups.append([])
            instanceNames.append(id)
        }
        instanceHost[Int(i)] = h
        instanceGroups[Int(i)] = gs
        hostInstances[Int(h)].insert(i)
        for g in gs {
            groupMembers[Int(g)].insert(i)
            count(member: g, host: h, by: 1)
        }
    }

    /// Removes an instance.
    public mutating func removeInstance(_ id: String) {
        guard let i = instanceIndex.removeValue(forKey: id) else { return }
        detach(i)
        // The slot stays (ids are array positions); a re-added id gets a fresh slot.
        instanceHost[Int(i)] = -1
        instanceGroups[Int(i)] = []
    }

    private mutating func detach(_ i: Int32) {
        let h = instanceHost[Int(i)]
        guard h >= 0 else { return }
        hostInstances[Int(h)].remove(i)
        for g in instanceGroups[Int(i)] {
            groupMembers[Int(g)].remove(i)
            count(member: g, host: h, by: -1)
        }
    }

    /// Member instances of a group (any order).
    public func members(of groupName: String) -> [String] {
        guard let g = groupIndex[groupName] else { return [] }
        return groupMembers[Int(g)].items.map { instanceNames[Int($0)] }
    }

    /// Groups whose rules reference `group` (any order).
    public func referrers(of groupName: String) -> [String] {
        guard let g = groupIndex[groupName] else { return [] }
        return referrers[Int(g)].items.map { groupNames[Int($0)] }
    }

    /// Instances on a host (any order): what its document is built from.
    public func instances(onHost hostName: String) -> [String] {
        guard let h = hostIndex[hostName] else { return [] }
        return hostInstances[Int(h)].items.map { instanceNames[Int($0)] }
    }

    private mutating func count(member g: Int32, host h: Int32, by n: Int32) {
        memberHosts[Int(g)].add(h, n)
        for r in references[Int(g)] { referrerHosts[Int(r)].add(h, n) }
    }

    /// Hosts that must receive `refresh_security_group_members(group)`: those with an instance
    /// whose rules reference the group. Time proportional to the answer.
    public func hostsForMembersRefresh(_ groupName: String) -> [String] {
        guard let g = groupIndex[groupName] else { return [] }
        return names(referrerHosts[Int(g)])
    }

    /// Hosts that must receive `refresh_security_group_rules(group)`: those with a member of the
    /// group. Time proportional to the answer.
    public func hostsForRulesRefresh(_ groupName: String) -> [String] {
        guard let g = groupIndex[groupName] else { return [] }
        return names(memberHosts[Int(g)])
    }

    private func names(_ c: HostCounts) -> [String] {
        var out: [String] = []
        out.reserveCapacity(c.count)
        c.forEachHost { out.append(hostNames[Int($0)]) }
        return out
    }

    /// Reference answer for tests and the benchmark baseline: the members-refresh hosts found by
    /// scanning every instance (cost proportional to the cloud).
    public func scanHostsForMembersRefresh(_ groupName: String) -> Set<String> {
        guard let g = groupIndex[groupName] else { return [] }
        var out = Set<String>()
        for (i, gs) in instanceGroups.enumerated() where instanceHost[i] >= 0 {
            if gs.contains(where: { references[Int($0)].contains(g) }) { out.insert(hostNames[Int(instanceHost[i])]) }
        }
        return out
    }

    /// Reference answer for the rules refresh, by scanning every instance.
    public func scanHostsForRulesRefresh(_ groupName: String) -> Set<String> {
        guard let g = groupIndex[groupName] else { return [] }
        var out = Set<String>()
        for (i, gs) in instanceGroups.enumerated() where instanceHost[i] >= 0 && gs.contains(g) {
            out.insert(hostNames[Int(instanceHost[i])])
        }
        return out
    }

    /// Reference answers by scanning, for tests.
    public func scanMembers(of groupName: String) -> Set<String> {
        guard let g = groupIndex[groupName] else { return [] }
        return Set(instanceGroups.indices.filter { instanceHost[$0] >= 0 && instanceGroups[$0].contains(g) }.map { instanceNames[$0] })
    }

    /// Groups referencing `group`, by scanning every group (tests).
    public func scanReferrers(of groupName: String) -> Set<String> {
        guard let g = groupIndex[groupName] else { return [] }
        return Set(references.indices.filter { references[$0].contains(g) }.map { groupNames[$0] })
    }

    /// Instances on a host, by scanning every instance (tests).
    public func scanInstances(onHost hostName: String) -> Set<String> {
        guard let h = hostIndex[hostName] else { return [] }
        return Set(instanceHost.indices.filter { instanceHost[$0] == h }.map { instanceNames[$0] })
    }
}
