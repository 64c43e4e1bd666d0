import Foundation
import RampartCore
import RampartStore

/// Who is calling: the account of the access key, and the region of the signature's scope
/// (or the server's default without auth).
public struct Caller: Sendable, Equatable {
    public var account: String
    public var region: String
    public init(account: String, region: String) {
        self.account = account
        self.region = region
    }
}

/// What one server enforces beyond the API's own rules (rampart-api's options).
public struct EC2Settings: Sendable {
    /// The regions a request may be signed for; any other is refused as AWS refuses a
    /// credential scoped to a region the endpoint does not serve (`SignatureDoesNotMatch`).
    public var regions: Set<String>
    /// At most this many security groups per instance (AWS: 5 by default, up to 16 by quota):
    /// more is `SecurityGroupsPerInterfaceLimitExceeded`.
    public var maxGroupsPerInterface: Int
    /// How long a terminated instance stays listed by DescribeInstances (AWS: about an hour).
    public var terminatedVisibleSeconds: Int

    /// AWS's hard ceiling of security groups per network interface.
    public static let groupsPerInterfaceCeiling = 16

    public init(regions: Set<String> = ["us-east-1"], maxGroupsPerInterface: Int = 5, terminatedVisibleSeconds: Int = 3600) {
        precondition((1...Self.groupsPerInterfaceCeiling).contains(maxGroupsPerInterface), "maxGroupsPerInterface: 1-16")
        self.regions = regions
        self.maxGroupsPerInterface = maxGroupsPerInterface
        self.terminatedVisibleSeconds = terminatedVisibleSeconds
    }
}

/// The EC2 actions over the store. Every mutating action is one store transaction
/// (`SQLStore.ec2Change`); its fan-out is handed to `deliver` after COMMIT, before the answer.
/// Each action reads all its parameters, and refuses any it did not read, before it touches
/// the store.
public final class EC2Service: Sendable {
    /// The pool's first connection (for callers outside a request).
    public var store: SQLStore { pool.primary }
    /// The connections requests run their transactions on.
    public let pool: StorePool
    public let settings: EC2Settings
    let deliver: @Sendable ([Delivery]) -> Void
    /// What makes the instances exist once their records are committed (`--compute`); nil:
    /// records only, the operator's compute creates the devices (Compute.swift).
    public let compute: (any InstanceCompute)?

    /// The service over one connection (requests take turns on it).
    public convenience init(store: SQLStore, settings: EC2Settings = EC2Settings(), compute: (any InstanceCompute)? = nil,
                            deliver: @escaping @Sendable ([Delivery]) -> Void) {
        self.init(pool: StorePool([store]), settings: settings, compute: compute, deliver: deliver)
    }

    /// The service over a pool of connections to one store.
    public init(pool: StorePool, settings: EC2Settings = EC2Settings(), compute: (any InstanceCompute)? = nil,
                deliver: @escaping @Sendable ([Delivery]) -> Void) {
        self.pool = pool
        self.settings = settings
        self.compute = compute
        self.deliver = deliver
    }

    /// The actions this server answers.
    public static let actions = [
        "CreateSecurityGroup", "DeleteSecurityGroup", "DescribeSecurityGroups", "DescribeSecurityGroupRules",
        "AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress", "RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress",
        "ModifySecurityGroupRules", "UpdateSecurityGroupRuleDescriptionsIngress", "UpdateSecurityGroupRuleDescriptionsEgress",
        "CreateTags", "DeleteTags", "RunInstances", "TerminateInstances", "DescribeInstances",
        "StopInstances", "StartInstances", "RebootInstances", "ModifyInstanceAttribute", "DescribeInstanceAttribute",
        "CreateVpc", "DescribeVpcs", "DeleteVpc",
    ]

    /// Answers one request: the XML body of a success, or the error.
    public func handle(_ form: Form, caller: Caller, requestID: String) throws(EC2Error) -> String {
        guard let action = form.string("Action") else { throw EC2Error("MissingAction", "The request must contain the parameter Action") }
        _ = form.string("Version")
        guard settings.regions.contains(caller.region) else {
            throw EC2Error("SignatureDoesNotMatch", "Credential should be scoped to a valid region, not '\(caller.region)'. This endpoint serves: \(settings.regions.sorted().joined(separator: ", "))", status: 403)
        }
        let body: (inout XMLWriter) -> Void
        switch action {
        case "CreateSecurityGroup": body = try createSecurityGroup(form, caller)
        case "DeleteSecurityGroup": body = try deleteSecurityGroup(form, caller)
        case "DescribeSecurityGroups": body = try describeSecurityGroups(form, caller)
        case "DescribeSecurityGroupRules": body = try describeSecurityGroupRules(form, caller)
        case "AuthorizeSecurityGroupIngress": body = try authorize(form, caller, .ingress)
        case "AuthorizeSecurityGroupEgress": body = try authorize(form, caller, .egress)
        case "RevokeSecurityGroupIngress": body = try revoke(form, caller, .ingress)
        case "RevokeSecurityGroupEgress": body = try revoke(form, caller, .egress)
        case "CreateTags": body = try tags(form, caller, create: true)
        case "DeleteTags": body = try tags(form, caller, create: false)
        case "RunInstances": body = try runInstances(form, caller)
        case "TerminateInstances": body = try transition(form, caller, .terminate)
        case "DescribeInstances": body = try describeInstances(form, caller)
        case "ModifySecurityGroupRules": body = try modifySecurityGroupRules(form, caller)
        case "UpdateSecurityGroupRuleDescriptionsIngress": body = try updateRuleDescriptions(form, caller, .ingress)
        case "UpdateSecurityGroupRuleDescriptionsEgress": body = try updateRuleDescriptions(form, caller, .egress)
        case "StopInstances": body = try transition(form, caller, .stop)
        case "StartInstances": body = try transition(form, caller, .start)
        case "RebootInstances": body = try transition(form, caller, .reboot)
        case "ModifyInstanceAttribute": body = try modifyInstanceAttribute(form, caller)
        case "DescribeInstanceAttribute": body = try describeInstanceAttribute(form, caller)
        case "CreateVpc": body = try createVpc(form, caller)
        case "DescribeVpcs": body = try describeVpcs(form, caller)
        case "DeleteVpc": body = try deleteVpc(form, caller)
        default: throw EC2Error("InvalidAction", "The action \(action) is not valid for this web service.")
        }
        return XMLWriter.response(action, requestID: requestID, body)
    }

    // MARK: transactions

    /// Refuses parameters the action did not read (before anything changes).
    func finish(_ form: Form) throws(EC2Error) {
        if let p = form.unread.first { throw EC2Error("UnknownParameter", "The parameter \(p) is not recognized") }
    }

    static func storeFailure(_ e: StoreError) -> EC2Error {
        switch e.kind {
        case .notFound: EC2Error("InvalidGroup.NotFound", e.message)
        case .conflict: EC2Error("DependencyViolation", e.message)
        case .invalid: .invalidParameter(e.message)
        case .database, .unavailable, .missing, .unsafe:
            {
                var failure = EC2Error.server("the store failed: \(e.message)")
                if let state = e.sqlState, state == "40001" || state == "40P01" { failure.retryable = e }
                return failure
            }()
        }
    }

    /// `body`'s errors as the client sees them: an EC2Error as it is, a store error mapped by
    /// `storeFailure`, anything else a server error.
    static func storeCall<T>(_ body: () throws -> T) throws(EC2Error) -> T {
        do { return try body() } catch let e as EC2Error { throw e } catch let e as StoreError { throw storeFailure(e) } catch { throw .server("\(error)") }
    }

    /// One write transaction; a dry run is rolled back after the body succeeded.
    func change<T>(_ dryRun: Bool, _ caller: Caller, _ body: (EC2Transaction, EC2VPC) throws(EC2Error) -> (T, [Delivery])) throws(EC2Error) -> T {
        do {
            let (value, deliveries) = try pool.with { store in
                try store.ec2Change { tx in
                    do {
                        let vpc = try Self.defaultVPC(tx, caller)
                        let r = try body(tx, vpc)
                        if dryRun { throw EC2Error.dryRun }
                        return r
                    } catch let e as EC2Error {
                        // A serialization failure goes back to the store as it came, so that it
                        // runs the transaction again (concurrent writers on PostgreSQL).
                        if let retry = e.retryable { throw retry }
                        throw e
                    }
                }
            }
            deliver(deliveries)
            return value
        } catch let e as EC2Error { throw e } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
    }

    /// One read transaction (after making sure the caller's default VPC exists).
    func read<T>(_ caller: Caller, _ body: (EC2Transaction, EC2VPC) throws(EC2Error) -> T) throws(EC2Error) -> T {
        do {
            // The default VPC is looked up in the read's own transaction (one round trip of
            // BEGIN…COMMIT fewer on PostgreSQL); only a caller's first request writes it, then
            // reads again. One connection per transaction, given back in between: `change`
            // borrows its own.
            func attempt() throws -> ReadAttempt<T> {
                try pool.with { store in
                    try store.ec2Read { tx in
                        guard let vpc = try tx.defaultVPC(account: caller.account, region: caller.region) else { return .noDefaultVPC }
                        return .read(try body(tx, vpc))
                    }
                }
            }
            if case .read(let value) = try attempt() { return value }
            let _: Int = try change(false, caller) { _, _ in (0, []) }
            guard case .read(let value) = try attempt() else { throw EC2Error.server("no default VPC") }
            return value
        } catch let e as EC2Error { throw e } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
    }

    /// A read that found the caller's default VPC, or did not (the caller's first request).
    enum ReadAttempt<T> { case read(T), noDefaultVPC }

    /// The caller's default VPC, created with its `default` group on first use.
    static func defaultVPC(_ tx: EC2Transaction, _ caller: Caller) throws -> EC2VPC {
        if let v = try tx.defaultVPC(account: caller.account, region: caller.region) { return v }
        let vpc = EC2VPC(id: newID("vpc"), account: caller.account, region: caller.region, cidr: "172.31.0.0/16", isDefault: true)
        try tx.insertVPC(vpc)
        try createDefaultGroup(tx, vpc: vpc.id)
        return vpc
    }

    static let anyIPv4 = IPPrefix.v4(IPv4Prefix(address: IPv4Address(raw: 0), length: 0))

    /// `prefix-` and 17 random hex digits.
    static func newID(_ prefix: String) -> String {
        var g = SystemRandomNumberGenerator()
        return prefix + "-" + (0..<17).map { _ in String(Int.random(in: 0..<16, using: &g), radix: 16) }.joined()
    }

    static func isID(_ s: String, _ prefix: String) -> Bool {
        guard s.hasPrefix(prefix + "-") else { return false }
        let hex = s.dropFirst(prefix.count + 1)
        return (hex.count == 8 || hex.count == 17) && hex.allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }

    /// A group id of the caller's: malformed → `InvalidGroupId.Malformed`, another account's or
    /// region's or unknown → `InvalidGroup.NotFound`.
    static func ownGroup(_ tx: EC2Transaction, _ caller: Caller, id: String) throws -> EC2Group {
        guard isID(id, "sg") else { throw EC2Error.malformedGroupID(id) }
        guard let g = try tx.group(id), g.vpc.account == caller.account, g.vpc.region == caller.region else { throw EC2Error.groupNotFound(id) }
        return g
    }

    /// The group named by `GroupId`, or by `GroupName` in the default VPC.
    static func target(_ form: Form) throws(EC2Error) -> (id: String?, name: String?) {
        let id = form.string("GroupId"), name = form.string("GroupName")
        if id == nil && name == nil { throw .missing("GroupId") }
        if id != nil && name != nil { throw EC2Error("InvalidParameterCombination", "Give GroupId or GroupName, not both") }
        if let id, !isID(id, "sg") { throw EC2Error.malformedGroupID(id) }
        return (id, name)
    }

    static func resolve(_ tx: EC2Transaction, _ caller: Caller, _ vpc: EC2VPC, _ t: (id: String?, name: String?)) throws -> EC2Group {
        if let id = t.id { return try ownGroup(tx, caller, id: id) }
        let name = t.name!
        guard let id = try tx.groupID(vpc: vpc.id, name: name), let g = try tx.group(id) else {
            throw EC2Error("InvalidGroup.NotFound", "The security group '\(name)' does not exist in default VPC '\(vpc.id)'")
        }
        return g
    }

    // MARK: tags

    static func parseTags(_ form: Form, _ prefix: String, valueRequired: Bool) throws(EC2Error) -> [(key: String, value: String?)] {
        var out: [(key: String, value: String?)] = []
        for i in try form.indices(prefix) {
            let key = try form.required("\(prefix).\(i).Key")
            let value = form.string("\(prefix).\(i).Value")
            guard (1...128).contains(key.unicodeScalars.count) else { throw .invalidParameter("Tag key '\(key)': 1-128 characters") }
            if key.lowercased().hasPrefix("aws:") { throw .invalidParameter("Tag keys starting with 'aws:' are reserved for AWS use") }
            if let value, value.unicodeScalars.count > 256 { throw .invalidParameter("Tag value for '\(key)': at most 256 characters") }
            if valueRequired && value == nil { out.append((key, "")) } else { out.append((key, value)) }
        }
        return out
    }

    /// `TagSpecification.N` of a create call, whose `ResourceType` must be `resourceType`.
    static func parseTagSpecifications(_ form: Form, resourceType: String) throws(EC2Error) -> [(key: String, value: String?)] {
        var tags: [(key: String, value: String?)] = []
        for i in try form.indices("TagSpecification") {
            let type = try form.required("TagSpecification.\(i).ResourceType")
            guard type == resourceType else { throw .invalidParameter("TagSpecification.\(i).ResourceType: '\(type)' is not \(resourceType)") }
            tags += try parseTags(form, "TagSpecification.\(i).Tag", valueRequired: true)
        }
        return tags
    }

    /// Sets `tags` on a group (`rule` nil) or on one of its rules; at most 50 per resource.
    static func applyTags(_ tx: EC2Transaction, _ group: String, rule: String? = nil, _ tags: [(key: String, value: String?)]) throws {
        for t in tags {
            if let rule { try tx.setRuleTag(rule, group: group, key: t.key, value: t.value ?? "") } else { try tx.setTag(group, key: t.key, value: t.value ?? "") }
        }
        let resource = rule ?? group
        if try (rule.map { try tx.ruleTags($0) } ?? tx.tags(group)).count > 50 {
            throw EC2Error("TagLimitExceeded", "The maximum number of tags for \(resource) is 50")
        }
    }

    // MARK: actions

    func createSecurityGroup(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let name = try form.required("GroupName")
        let description = try form.required("GroupDescription")
        let vpcID = form.string("VpcId")
        let dryRun = try form.bool("DryRun")
        let tags = try Self.parseTagSpecifications(form, resourceType: "security-group")
        try finish(form)
        guard (1...255).contains(name.unicodeScalars.count) else { throw .invalidParameter("GroupName: 1-255 characters") }
        if name.lowercased().hasPrefix("sg-") { throw .invalidParameter("Group names may not be in the format sg-*") }
        if name == "default" { throw EC2Error("InvalidGroup.Reserved", "The security group 'default' is reserved") }
        guard description.unicodeScalars.count <= 255 else { throw .invalidParameter("GroupDescription: at most 255 characters") }
        let (id, tagged): (String, [String: String]) = try change(dryRun, caller) { tx, vpc throws(EC2Error) in
            do {
                let target = try vpcID.map { try Self.ownVPC(tx, caller, id: $0) } ?? vpc
                if try tx.groupID(vpc: target.id, name: name) != nil {
                    throw EC2Error("InvalidGroup.Duplicate", "The security group '\(name)' already exists for VPC '\(target.id)'")
                }
                let sg = Self.newID("sg")
                try tx.insertGroup(id: sg, vpc: target.id, name: name, description: description)
                // As AWS: all IPv4 egress, and nothing else.
                _ = try tx.setRules(sg, [Rule(id: Self.newID("sgr"), direction: .egress, proto: .any, remote: .cidr(Self.anyIPv4))], descriptions: [:])
                try Self.applyTags(tx, sg, tags)
                return ((sg, try tx.tags(sg)), [])
            } catch let e as EC2Error { throw e } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
        }
        return { w in
            w.leaf("return", true)
            w.leaf("groupId", id)
            if !tagged.isEmpty { w.tagSet(tagged) }
        }
    }

    func deleteSecurityGroup(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let t = try Self.target(form)
        let dryRun = try form.bool("DryRun")
        try finish(form)
        let id: String = try change(dryRun, caller) { tx, vpc throws(EC2Error) in
            do {
                let g = try Self.resolve(tx, caller, vpc, t)
                if g.name == "default" {
                    throw EC2Error("CannotDelete", "the specified group: \"\(g.id)\" name: \"default\" cannot be deleted by a user")
                }
                let members = try tx.members(of: g.id)
                if !members.isEmpty { throw EC2Error("DependencyViolation", "resource \(g.id) has a dependent object (instances \(members.joined(separator: ", ")))") }
                let referrers = try tx.referrers(of: g.id)
                if !referrers.isEmpty { throw EC2Error("DependencyViolation", "resource \(g.id) has a dependent object (referenced by \(referrers.joined(separator: ", ")))") }
                try tx.deleteGroup(g.id)
                return (g.id, [])
            } catch let e as EC2Error { throw e } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
        }
        return { w in
            w.leaf("return", true)
            w.leaf("groupId", id)
        }
    }

    // MARK: rules

    func authorize(_ form: Form, _ caller: Caller, _ direction: Direction) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let t = try Self.target(form)
        let dryRun = try form.bool("DryRun")
        var referenced: [String] = []
        let parsed = try Permissions.parse(form, direction: direction) { id throws(EC2Error) in
            guard Self.isID(id, "sg") else { throw EC2Error.malformedGroupID(id) }
            referenced.append(id)
            return id
        }
        if parsed.isEmpty { throw .missing("IpPermissions") }
        let ruleTags = try Self.parseTagSpecifications(form, resourceType: "security-group-rule")
        try finish(form)
        let (group, added): (EC2Group, [Rule]) = try change(dryRun, caller) { tx, vpc throws(EC2Error) in
            do {
                let g = try Self.resolve(tx, caller, vpc, t)
                for r in referenced { try Self.checkReferenced(tx, caller, r, from: g) }
                var rules = g.rules
                var descriptions = g.ruleDescriptions
                var added: [Rule] = []
                for p in parsed {
                    if rules.contains(where: { Permissions.bare($0) == p.rule }) {
                        throw EC2Error("InvalidPermission.Duplicate", "the specified rule \"\(Permissions.text(p.rule))\" already exists")
                    }
                    var r = p.rule
                    r.id = Self.newID("sgr")
                    rules.append(r)
                    added.append(r)
                    if let d = p.description { descriptions[r.id!] = d }
                }
                let deliveries = try tx.setRules(g.id, rules, descriptions: descriptions, previous: g)
                var after = g
                after.ruleDescriptions = descriptions
                for r in added where !ruleTags.isEmpty {
                    try Self.applyTags(tx, g.id, rule: r.id, ruleTags)
                    after.ruleTags[r.id!] = try tx.ruleTags(r.id!)
                }
                return ((after, added), deliveries)
            } catch let e as EC2Error { throw e } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
        }
        return { w in
            w.leaf("return", true)
            w.list("securityGroupRuleSet", added) { w, r in Self.writeRule(&w, r, group) }
        }
    }

    /// `IpPermissions.N` naming rules that should exist (revoke, descriptions): a referenced
    /// group is only checked for form here; matching the group's rules finds whether it exists.
    static func permissionsToMatch(_ form: Form, _ direction: Direction) throws(EC2Error) -> [Permissions.Parsed] {
        try Permissions.parse(form, direction: direction) { id throws(EC2Error) in
            guard isID(id, "sg") else { throw EC2Error.malformedGroupID(id) }
            return id
        }
    }

    func revoke(_ form: Form, _ caller: Caller, _ direction: Direction) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let t = try Self.target(form)
        let dryRun = try form.bool("DryRun")
        let parsed = try Self.permissionsToMatch(form, direction)
        let ruleIDs = try form.strings("SecurityGroupRuleId")
        for id in ruleIDs where !Self.isID(id, "sgr") { throw Self.malformedRuleID(id) }
        if parsed.isEmpty && ruleIDs.isEmpty { throw .missing("IpPermissions or SecurityGroupRuleId") }
        try finish(form)
        try change(dryRun, caller) { tx, vpc throws(EC2Error) -> (Void, [Delivery]) in
            do {
                let g = try Self.resolve(tx, caller, vpc, t)
                var rules = g.rules
                for id in ruleIDs {
                    guard let i = rules.firstIndex(where: { $0.id == id && $0.direction == direction }) else {
                        throw Self.ruleNotFound(id, in: "\(g.id) (\(direction.rawValue))")
                    }
                    rules.remove(at: i)
                }
                for p in parsed {
                    guard let i = rules.firstIndex(where: { Permissions.bare($0) == p.rule }) else {
                        throw EC2Error("InvalidPermission.NotFound", "The specified rule does not exist in this security group: \"\(Permissions.text(p.rule))\"")
                    }
                    rules.remove(at: i)
                }
                return ((), try tx.setRules(g.id, rules, descriptions: g.ruleDescriptions, previous: g))
            } catch let e as EC2Error { throw e } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
        }
        return { w in w.leaf("return", true) }
    }

    // MARK: describe

    /// Filters: `Filter.N.Name` and `Filter.N.Value.M` (values match with `*` and `?`).
    static func parseFilters(_ form: Form, allowed: (String) -> Bool) throws(EC2Error) -> [(name: String, values: [String])] {
        var out: [(name: String, values: [String])] = []
        for i in try form.indices("Filter") {
            let name = try form.required("Filter.\(i).Name")
            guard allowed(name) else { throw .invalidParameter("The filter '\(name)' is invalid") }
            let values = try form.strings("Filter.\(i).Value")
            if values.isEmpty { throw .missing("Filter.\(i).Value.1") }
            out.append((name, values))
        }
        return out
    }

    /// AWS's filter patterns: `*` any run of characters, `?` one character, `\` escapes.
    ///
    /// Greedy with one backtrack point (the last `*`): at most pattern × value steps. A
    /// recursive backtracker took time exponential in the stars (`*a*a*a*a*b` against 255 `a`s
    /// did not finish in minutes), and a request cannot be cancelled: a few such filters from any
    /// account would have held the API's threads for everyone.
    static func matches(_ pattern: String, _ value: String) -> Bool {
        enum Token: Equatable { case star, one, char(Character) }
        var t: [Token] = []
        var it = Array(pattern)[...]
        while let c = it.popFirst() {
            switch c {
            case "*": if t.last != .star { t.append(.star) }
            case "?": t.append(.one)
            case "\\" where !it.isEmpty: t.append(.char(it.popFirst()!))
            default: t.append(.char(c))
            }
        }
        let v = Array(value)
        var i = 0, j = 0
        var star: (token: Int, value: Int)?
        while j < v.count {
            if i < t.count, t[i] == .one || t[i] == .char(v[j]) {
                i += 1
                j += 1
            } else if i < t.count, t[i] == .star {
                star = (i, j)
                i += 1
            } else if let s = star {
                // The last star takes one character more; everything after it is tried again.
                star = (s.token, s.value + 1)
                i = s.token + 1
                j = s.value + 1
            } else {
                return false
            }
        }
        while i < t.count, t[i] == .star { i += 1 }
        return i == t.count
    }

    static func pageSize(_ form: Form, range: ClosedRange<Int>) throws(EC2Error) -> Int? {
        guard let n = try form.int("MaxResults") else { return nil }
        guard range.contains(n) else { throw .invalidParameter("Value (\(n)) for parameter maxResults is invalid. Expecting a value between \(range.lowerBound) and \(range.upperBound).") }
        return n
    }

    /// The end of a Describe's parameters, read the same way by every Describe: `MaxResults`
    /// (5–1000), `NextToken`, `DryRun` (answered here, once every parameter is read and the
    /// unread ones refused). `MaxResults` with an explicit list of ids (`listed`) is
    /// `InvalidParameterCombination`, naming the list as AWS does (`listName`).
    func describePaging(_ form: Form, listed: Bool, listName: String) throws(EC2Error) -> (size: Int?, after: String?) {
        let size = try Self.pageSize(form, range: 5...1000)
        let after = try form.string("NextToken").map { t throws(EC2Error) in try Self.parseToken(t) }
        let dryRun = try form.bool("DryRun")
        try finish(form)
        if dryRun { throw .dryRun }
        if size != nil && listed { throw EC2Error("InvalidParameterCombination", "The parameter \(listName) cannot be used with the parameter maxResults") }
        return (size, after)
    }

    static func token(after id: String) -> String { Data(("v1:" + id).utf8).base64EncodedString() }

    static func parseToken(_ t: String) throws(EC2Error) -> String {
        guard let d = Data(base64Encoded: t), let s = String(data: d, encoding: .utf8), s.hasPrefix("v1:") else {
            throw EC2Error("InvalidPaginationToken", "The pagination token is invalid")
        }
        return String(s.dropFirst(3))
    }

    /// One page of `items` (sorted by key) after the token's key.
    static func page<T>(_ items: [T], key: (T) -> String, size: Int?, after: String?) -> (items: [T], next: String?) {
        var rest = items
        if let after { rest = items.filter { key($0) > after } }
        guard let size, rest.count > size else { return (rest, nil) }
        let page = Array(rest.prefix(size))
        return (page, token(after: key(page.last!)))
    }

    func describeSecurityGroups(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let ids = try form.strings("GroupId")
        let names = try form.strings("GroupName")
        let filters = try Self.parseFilters(form) { ["group-id", "group-name", "vpc-id", "description", "owner-id", "tag-key"].contains($0) || $0.hasPrefix("tag:") }
        let (size, after) = try describePaging(form, listed: !(ids.isEmpty && names.isEmpty), listName: "GroupIds or GroupNames")
        for id in ids where !Self.isID(id, "sg") { throw EC2Error.malformedGroupID(id) }
        let groups: [EC2Group] = try read(caller) { tx, vpc throws(EC2Error) in
            do {
                // Only the groups asked for, when they are named: a Describe of one group must
                // not read every group of the account.
                var all = !ids.isEmpty ? try tx.groups(account: caller.account, region: caller.region, ids: ids)
                    : !names.isEmpty ? try tx.groups(vpc: vpc.id, names: names)
                    : try tx.groups(account: caller.account, region: caller.region)
                if !ids.isEmpty {
                    for id in ids where !all.contains(where: { $0.id == id }) { throw EC2Error.groupNotFound(id) }
                    all = all.filter { ids.contains($0.id) }
                }
                if !names.isEmpty {
                    for n in names where !all.contains(where: { $0.name == n && $0.vpc.id == vpc.id }) {
                        throw EC2Error("InvalidGroup.NotFound", "The security group '\(n)' does not exist in default VPC '\(vpc.id)'")
                    }
                    all = all.filter { names.contains($0.name) && $0.vpc.id == vpc.id }
                }
                return all
            } catch let e as EC2Error { throw e } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
        }
        let filtered = groups.filter { g in
            filters.allSatisfy { f in
                let candidates: [String] = switch f.name {
                case "group-id": [g.id]
                case "group-name": [g.name]
                case "vpc-id": [g.vpc.id]
                case "description": [g.description]
                case "owner-id": [g.vpc.account]
                case "tag-key": Array(g.tags.keys)
                default: g.tags[String(f.name.dropFirst(4))].map { [$0] } ?? []
                }
                return candidates.contains { c in f.values.contains { Self.matches($0, c) } }
            }
        }
        let (page, next) = Self.page(filtered, key: \.id, size: size, after: after)
        return { w in
            w.list("securityGroupInfo", page) { w, g in Self.writeGroup(&w, g) }
            w.leaf("nextToken", next)
        }
    }

    func describeSecurityGroupRules(_ form: Form, _ caller: Caller) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let ids = try form.strings("SecurityGroupRuleId")
        let filters = try Self.parseFilters(form) { ["group-id", "security-group-rule-id", "tag-key"].contains($0) || $0.hasPrefix("tag:") }
        let (size, after) = try describePaging(form, listed: false, listName: "")
        for id in ids where !Self.isID(id, "sgr") { throw Self.malformedRuleID(id) }
        let groups: [EC2Group] = try read(caller) { tx, _ throws(EC2Error) in
            do { return try tx.groups(account: caller.account, region: caller.region) } catch let e as StoreError { throw Self.storeFailure(e) } catch { throw .server("\(error)") }
        }
        var rows: [(Rule, EC2Group)] = []
        for g in groups { for r in g.rules where r.id != nil { rows.append((r, g)) } }
        rows.sort { $0.0.id! < $1.0.id! }
        for id in ids where !rows.contains(where: { $0.0.id == id }) {
            throw EC2Error("InvalidSecurityGroupRuleId.NotFound", "The security group rule ID '\(id)' does not exist")
        }
        if !ids.isEmpty { rows = rows.filter { ids.contains($0.0.id!) } }
        rows = rows.filter { r, g in
            let tags = g.ruleTags[r.id!] ?? [:]
            return filters.allSatisfy { f in
                let candidates: [String] = switch f.name {
                case "group-id": [g.id]
                case "security-group-rule-id": [r.id!]
                case "tag-key": Array(tags.keys)
                default: tags[String(f.name.dropFirst(4))].map { [$0] } ?? []
                }
                return candidates.contains { c in f.values.contains { Self.matches($0, c) } }
            }
        }
        let (page, next) = Self.page(rows, key: { $0.0.id! }, size: size, after: after)
        return { w in
            w.list("securityGroupRuleSet", page) { w, row in Self.writeRule(&w, row.0, row.1) }
            w.leaf("nextToken", next)
        }
    }

    // MARK: tags

    /// CreateTags/DeleteTags on VPCs (`vpc-`), security groups (`sg-`) and their rules (`sgr-`).
    func tags(_ form: Form, _ caller: Caller, create: Bool) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let resources = try form.strings("ResourceId")
        if resources.isEmpty { throw .missing("ResourceId.1") }
        let tags = try Self.parseTags(form, "Tag", valueRequired: create)
        if create && tags.isEmpty { throw .missing("Tag.1.Key") }
        let dryRun = try form.bool("DryRun")
        try finish(form)
        for r in resources where !Self.isID(r, "sg") && !Self.isID(r, "sgr") && !Self.isID(r, "vpc") {
            throw EC2Error("InvalidID", "The ID '\(r)' is not valid (this server tags VPCs, security groups and their rules only)")
        }
        try change(dryRun, caller) { tx, _ throws(EC2Error) -> (Void, [Delivery]) in
            try Self.storeCall {
                // A rule is found through the caller's groups: its id lives in its group's rules.
                let owned = resources.contains { Self.isID($0, "sgr") } ? try tx.groups(account: caller.account, region: caller.region) : []
                for r in resources {
                    var group = r, rule: String?
                    if Self.isID(r, "sgr") {
                        guard let g = owned.first(where: { $0.rules.contains { $0.id == r } }) else { throw Self.ruleNotFound(r, in: "this account's groups") }
                        (group, rule) = (g.id, r)
                    } else if Self.isID(r, "vpc") {
                        _ = try Self.ownVPC(tx, caller, id: r)
                    } else {
                        _ = try Self.ownGroup(tx, caller, id: r)
                    }
                    if create { try Self.applyTags(tx, group, rule: rule, tags); continue }
                    let have = try rule.map { try tx.ruleTags($0) } ?? tx.tags(group)
                    // Without tags, every tag goes; with a value, only a tag with that value.
                    for (key, value) in have where tags.isEmpty || tags.contains(where: { $0.key == key && ($0.value == nil || $0.value == value) }) {
                        if let rule { try tx.deleteRuleTag(rule, key: key) } else { try tx.deleteTag(group, key: key) }
                    }
                }
                return ((), [])
            }
        }
        return { w in w.leaf("return", true) }
    }

    // MARK: XML

    static func writeGroup(_ w: inout XMLWriter, _ g: EC2Group) {
        w.leaf("ownerId", g.vpc.account)
        w.leaf("groupId", g.id)
        w.leaf("groupName", g.name)
        w.leaf("groupDescription", g.description)
        w.leaf("vpcId", g.vpc.id)
        w.leaf("securityGroupArn", "arn:aws:ec2:\(g.vpc.region):\(g.vpc.account):security-group/\(g.id)")
        writePermissions(&w, "ipPermissions", g.rules.filter { $0.direction == .ingress }, g)
        writePermissions(&w, "ipPermissionsEgress", g.rules.filter { $0.direction == .egress }, g)
        w.tagSet(g.tags)
    }

    /// Rules grouped as AWS shows them: one permission per protocol and port range, in the
    /// order of their first rule.
    static func writePermissions(_ w: inout XMLWriter, _ name: String, _ rules: [Rule], _ g: EC2Group) {
        struct Key: Hashable { var proto: String; var from: Int?; var to: Int? }
        var order: [Key] = []
        var byKey: [Key: [Rule]] = [:]
        for r in rules {
            let (from, to) = Permissions.ports(r)
            let k = Key(proto: Permissions.protocolName(r.proto), from: from, to: to)
            if byKey[k] == nil { order.append(k) }
            byKey[k, default: []].append(r)
        }
        w.list(name, order) { w, k in
            let rs = byKey[k]!
            w.leaf("ipProtocol", k.proto)
            w.leaf("fromPort", k.from)
            w.leaf("toPort", k.to)
            w.list("groups", rs.compactMap { r -> (String, String?)? in
                if case .group(let ref) = r.remote { return (ref, r.id.flatMap { g.ruleDescriptions[$0] }) }
                return nil
            }) { w, x in
                w.leaf("userId", g.vpc.account)
                w.leaf("groupId", x.0)
                w.leaf("description", x.1)
            }
            for family in [IPFamily.ipv4, .ipv6] {
                w.list(family == .ipv4 ? "ipRanges" : "ipv6Ranges", rs.compactMap { r -> (String, String?)? in
                    if case .cidr(let c) = r.remote, c.family == family { return (c.description, r.id.flatMap { g.ruleDescriptions[$0] }) }
                    return nil
                }) { w, x in
                    w.leaf(family == .ipv4 ? "cidrIp" : "cidrIpv6", x.0)
                    w.leaf("description", x.1)
                }
            }
            w.element("prefixListIds") { _ in }
        }
    }

    static func writeRule(_ w: inout XMLWriter, _ r: Rule, _ g: EC2Group) {
        w.leaf("securityGroupRuleId", r.id)
        w.leaf("groupId", g.id)
        w.leaf("groupOwnerId", g.vpc.account)
        w.leaf("isEgress", r.direction == .egress)
        w.leaf("ipProtocol", Permissions.protocolName(r.proto))
        let (from, to) = Permissions.ports(r)
        w.leaf("fromPort", from ?? -1)
        w.leaf("toPort", to ?? -1)
        switch r.remote {
        case .cidr(let c): w.leaf(c.family == .ipv4 ? "cidrIpv4" : "cidrIpv6", c.description)
        case .group(let ref):
            w.element("referencedGroupInfo") { w in
                w.leaf("groupId", ref)
                w.leaf("userId", g.vpc.account)
            }
        }
        w.leaf("description", r.id.flatMap { g.ruleDescriptions[$0] })
        w.tagSet(r.id.flatMap { g.ruleTags[$0] } ?? [:])
        w.leaf("securityGroupRuleArn", r.id.map { "arn:aws:ec2:\(g.vpc.region):\(g.vpc.account):security-group-rule/\($0)" })
    }
}
