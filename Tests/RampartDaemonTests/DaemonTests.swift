import Foundation
import RampartCore
import RampartDaemon
import RampartNetlink
import RampartNFTables
import RampartStore
import Testing

/// The daemon core against the in-memory kernel (no root): incremental refreshes reach exactly the
/// state the store describes, bursts are coalesced, other writers and drift are noticed.
@Suite("Daemon core (fake kernel)") struct DaemonTests {
    final class Fixture: @unchecked Sendable {
        let store: SQLiteStore
        let kernel = FakeKernel()
        /// Resyncs and retries happen when the test moves this clock.
        let clock = ManualClock()
        let daemon: Daemon
        /// What the daemon reads through: `store`, and a test can hold a drain on it.
        let reads: FlakyStore
        init(host: String = "hv1", resync: Double = 3600, populate: (SQLiteStore) throws -> Void = { _ in }) throws {
            store = try SQLiteStore(path: tempDir("core") + "/rampart.db")
            try populate(store)
            reads = FlakyStore(store)
            let k = kernel
            daemon = Daemon(configuration: .init(host: host, resyncInterval: resync), store: reads, clock: clock, backend: { NFTablesBackend(client: k.nft) })
        }
        func start() async {
            daemon.start()
            await daemon.waitUntilReady()
        }
        /// Delivers the fan-out for this daemon's host and waits for the commit.
        func deliver(_ ds: [Delivery]) async throws {
            for d in ds where d.host == daemon.host {
                let o = await daemon.refresh(d.refresh)
                guard case .committed = o else { throw DaemonFailure(description: "\(d): \(o)") }
            }
        }
        /// Queues this host's refreshes of `ds` together (a drain may take them at once, as a
        /// daemon behind its log does) and waits for the drain of the last.
        func deliverTogether(_ ds: [Delivery]) async throws {
            var last: UInt64 = 0
            for d in ds where d.host == daemon.host { last = daemon.enqueue(d.refresh) }
            let o = await daemon.wait(for: last)
            guard case .committed = o else { throw DaemonFailure(description: "drain: \(o)") }
        }
        /// Queues this host's refreshes of `ds` while a drain is held (reading `held`'s members,
        /// which this host must keep), so that the next drain takes all of them at once; waits
        /// for it.
        func deliverInOneDrain(_ ds: [Delivery], holding held: String) async throws {
            reads.blockReadingMembers(of: held)
            let first = daemon.enqueue(.members(held))
            guard reads.waitUntilBlocked() else { throw DaemonFailure(description: "no drain read \(held)'s members") }
            var last: UInt64 = 0
            for d in ds where d.host == daemon.host { last = daemon.enqueue(d.refresh) }
            reads.release()
            _ = await daemon.wait(for: first)
            let o = await daemon.wait(for: last)
            guard case .committed = o else { throw DaemonFailure(description: "drain: \(o)") }
        }
        /// The daemon's committed state against the store's compiled document, as a diff.
        func committedAgainstStore() throws -> (equal: Bool, diff: String) {
            let want = try expected()
            return (daemon.engineCommittedForTesting == want, Render.plan(diff(from: daemon.engineCommittedForTesting, to: want)))
        }
        /// What the store says this host must enforce.
        func expected() throws -> RulesetIR { Compiler.compile(try store.document(forHost: daemon.host)) }
        func kernelIR() throws -> RulesetIR? {
            try NFTablesBackend(client: kernel.nft).readBack(reference: try expected())
        }
    }
    struct DaemonFailure: Error, CustomStringConvertible { var description: String }

    static func base(_ st: SQLiteStore) throws {
        for g in ["web", "db", "admin"] { _ = try st.createGroup(g, description: nil) }
        _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"80","cidr":"0.0.0.0/0"}"#, "web"))
        _ = try st.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"22","group":"admin"}"#, "web", refs: ["admin"]))
        _ = try st.authorize(group: "db", rule: try rule(#"{"protocol":"tcp","ports":"5432","group":"web"}"#, "db", refs: ["web"]))
        _ = try st.addInstance("web-1", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.11")], interface: "tapweb1"))
        _ = try st.addInstance("db-1", Instance(host: "hv1", groups: ["db"], ips: [ip("10.0.2.21")], interface: "tapdb1"))
        _ = try st.addInstance("bastion", Instance(host: "hv2", groups: ["admin"], ips: [ip("10.0.9.5")], interface: "tapb"))
    }

    @Test func firstSyncBringsTheKernelToTheStore() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        #expect(f.daemon.currentStatus.ready)
        #expect(f.kernel.nft.committed.count == 1)
        #expect(try f.kernelIR() == f.expected())
        #expect(f.daemon.currentStatus.localInstances == 2)
    }

    /// `document_reloads` counts the drains that read the host's whole document: a rules change
    /// of an enforced group is an event, a plug into a group new to the host reads what is new
    /// (neither reloads); a host refresh does.
    @Test func drainsThatReadTheWholeDocumentAreCounted() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        #expect(f.daemon.currentStatus.documentReloads == 0)
        try await f.deliver(try f.store.authorize(group: "web", rule: try rule(#"{"protocol":"tcp","ports":"443","cidr":"0.0.0.0/0"}"#, "web")))
        _ = try f.store.createGroup("ops", description: nil)
        try await f.deliver(try f.store.addInstance("ops-1", Instance(host: "hv1", groups: ["ops"], ips: [ip("10.0.5.1")], interface: "tapops")))
        #expect(f.daemon.currentStatus.documentReloads == 0)
        guard case .committed = await f.daemon.refresh(.host) else { Issue.record("host refresh failed"); return }
        #expect(f.daemon.currentStatus.documentReloads == 1)
        #expect(f.daemon.currentStatus.json.contains(#""document_reloads":1"#))
        #expect(f.daemon.metricsText().contains("rampart_document_reloads_total 1"))
        #expect(try f.kernelIR() == f.expected())
    }

    /// An instance plugged into a group the host does not enforce yet, and an instance whose
    /// groups change to one: answered from what changed (the new group's rules, the members
    /// elsewhere of the groups referenced only now), never a whole-document read, and the
    /// committed state is the store's document compiled. Leaving the group drops the members it
    /// alone brought in.
    @Test func joiningAGroupNewToTheHostReadsOnlyWhatIsNew() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        for g in ["ops", "mon", "ops2"] { _ = try f.store.createGroup(g, description: nil) }
        // db is enforced here but referenced by nothing: its members elsewhere are not listed.
        _ = try f.store.addInstance("db-2", Instance(host: "hv3", groups: ["db"], ips: [ip("10.0.2.22")], interface: "tapdb2"))
        _ = try f.store.addInstance("mon-1", Instance(host: "hv3", groups: ["mon"], ips: [ip("10.0.7.1")], interface: "tapmon"))
        _ = try f.store.authorize(group: "ops", rule: try rule(#"{"protocol":"tcp","ports":"9000","group":"db"}"#, "ops", refs: ["db"]))
        _ = try f.store.authorize(group: "ops", rule: try rule(#"{"protocol":"udp","ports":"161","group":"mon"}"#, "ops", refs: ["mon"]))
        _ = try f.store.authorize(group: "ops2", rule: try rule(#"{"protocol":"tcp","ports":"8443","group":"admin"}"#, "ops2", refs: ["admin"]))

        func check(_ step: String) throws {
            let want = try f.expected()
            #expect(f.daemon.engineCommittedForTesting == want,
                    "\(step): daemon → store: \(Render.plan(diff(from: f.daemon.engineCommittedForTesting, to: want)))")
            #expect(f.daemon.currentStatus.documentReloads == 0, "\(step) read the whole document")
        }
        try await f.deliver(try f.store.addInstance("ops-1", Instance(host: "hv1", groups: ["ops"], ips: [ip("10.0.5.1")], interface: "tapops")))
        try check("plug into ops")
        let doc = try f.store.document(forHost: "hv1")
        #expect(doc.instances["db-2"] != nil && doc.instances["mon-1"] != nil, "the referenced groups' members elsewhere are enforced")
        try await f.deliver(try f.store.setGroups(instance: "web-1", groups: ["web", "ops2"]))
        try check("web-1 joins ops2")
        try await f.deliver(try f.store.setGroups(instance: "ops-1", groups: ["web"]))
        try check("ops-1 leaves ops")
        #expect(try f.store.document(forHost: "hv1").instances["mon-1"] == nil)
        #expect(try f.kernelIR() == f.expected())
    }

    /// One drain carries an instance leaving a group and another joining it, with a rule added
    /// to the group in between (when it had no member here, so this host was not told). The
    /// joiner comes first in the drain: the engine still sees the leaver in the group, but its
    /// copy of the group's rules is stale; they are read from the store. (Found by
    /// `randomVerbsConverge`, seed 46, batched: a rule missing from the kernel.)
    @Test func aGroupEmptiedAndRejoinedInOneDrainGetsItsCurrentRules() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        // "a-joiner" sorts before "db-1": the drain handles it first.
        try await f.deliver(try f.store.addInstance("a-joiner", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.12")], interface: "tapj")))
        var queued: [Delivery] = []
        queued += try f.store.setGroups(instance: "db-1", groups: ["web"])        // db has no member here now
        queued += try f.store.authorize(group: "db", rule: try rule(#"{"protocol":"tcp","ports":"6379","group":"admin"}"#, "db", refs: ["admin"]))
        queued += try f.store.setGroups(instance: "a-joiner", groups: ["web", "db"])
        #expect(!queued.contains { $0.host == "hv1" && $0.refresh == .rules("db") }, "hv1 was not told of db's new rule")
        var last: UInt64 = 0
        for d in queued where d.host == "hv1" { last = f.daemon.enqueue(d.refresh) }
        guard case .committed = await f.daemon.wait(for: last) else { Issue.record("drain failed"); return }
        let want = try f.expected()
        #expect(f.daemon.engineCommittedForTesting == want, "daemon → store: \(Render.plan(diff(from: f.daemon.engineCommittedForTesting, to: want)))")
    }

    /// One drain carries a rule revoked from web (its reference to admin: so the store stops
    /// sending admin's members changes here) and an instance joining a new group that references
    /// admin; between them a member joined admin elsewhere, and this host was not told. web's
    /// copy of its rules is stale in this drain, so its old reference must not make admin's
    /// members count as kept up to date: they are read afresh. (Found by `randomVerbsConverge`,
    /// seed 276, batched, on some runs: a member missing from the kernel's member set.)
    @Test func aReferenceOnlyAStaleRuleKeptIsReadAfresh() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        var queued: [Delivery] = []
        queued += try f.store.revoke(group: "web", rule: try f.store.group("web")!.rules.first { $0.remote == .group("admin") }!, id: nil)
        let joined = try f.store.addInstance("bastion-2", Instance(host: "hv2", groups: ["admin"], ips: [ip("10.0.9.6")], interface: "tapb2"))
        #expect(!joined.contains { $0.host == "hv1" }, "hv1 no longer references admin in the store: not told")
        _ = try f.store.createGroup("ops", description: nil)
        _ = try f.store.authorize(group: "ops", rule: try rule(#"{"protocol":"tcp","ports":"9100","group":"admin"}"#, "ops", refs: ["admin"]))
        queued += try f.store.addInstance("ops-1", Instance(host: "hv1", groups: ["ops"], ips: [ip("10.0.5.1")], interface: "tapops"))
        try await f.deliverTogether(queued)
        #expect(try f.expected().sets["m4-admin"]?.elements.contains(.ipv4(IPv4Address("10.0.9.6")!)) == true)
        let (equal, diff) = try f.committedAgainstStore()
        #expect(equal, "daemon → store: \(diff)")
    }

    /// A rule that references a group this host's up-to-date groups do not reference reads that
    /// group's members from the store (no reload): a group new to the host, and a group whose
    /// only reference here was revoked and given back while this host was behind (a member
    /// joined it in between, and this host was not told).
    @Test func aRuleReferencingAGroupNotKeptHereReadsItsMembers() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        _ = try f.store.createGroup("mon", description: nil)
        _ = try f.store.addInstance("mon-1", Instance(host: "hv3", groups: ["mon"], ips: [ip("10.0.7.1")], interface: "tapm"))
        try await f.deliver(try f.store.authorize(group: "db", rule: try rule(#"{"protocol":"tcp","ports":"9100","group":"mon"}"#, "db", refs: ["mon"])))
        #expect(f.daemon.engineCommittedForTesting == (try f.expected()))
        #expect(f.daemon.currentStatus.documentReloads == 0, "a group new to the host: its members read, no reload")

        let adminRule = try f.store.group("web")!.rules.first { $0.remote == .group("admin") }!
        var queued = try f.store.revoke(group: "web", rule: adminRule, id: nil)
        let joined = try f.store.addInstance("bastion-2", Instance(host: "hv2", groups: ["admin"], ips: [ip("10.0.9.6")], interface: "tapb2"))
        #expect(!joined.contains { $0.host == "hv1" })
        queued += try f.store.authorize(group: "web", rule: adminRule)
        try await f.deliverTogether(queued)
        #expect(try f.expected().sets["m4-admin"]?.elements.contains(.ipv4(IPv4Address("10.0.9.6")!)) == true)
        let (equal, diff) = try f.committedAgainstStore()
        #expect(equal, "daemon → store: \(diff)")
        #expect(f.daemon.currentStatus.documentReloads == 0)
    }

    /// An interface freed and taken by a new instance in one drain, the new one sorting first
    /// and joining the old one's group, whose rule was revoked in the same drain: its join reads
    /// the group's rules afresh (the group's only member here is being refreshed) and the engine
    /// takes the revoke, then the plug is refused (the engine still gives the interface to the
    /// old instance) and the drain reloads. Catches: the join's first events lost from the
    /// drain's Plan (the reload's Plan is a difference from an engine that already holds them):
    /// the revoked rule stayed in the kernel while the engine believed it gone (fail open, until
    /// a resync's read-back).
    @Test func aRefusedEventAfterOthersOfItsRefreshLosesNone() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        let http = try f.store.group("web")!.rules.first { $0.ports == 80...80 }!
        var queued = try f.store.revoke(group: "web", rule: http, id: nil)
        queued += try f.store.removeInstance("web-1")
        queued += try f.store.addInstance("a-new", Instance(host: "hv1", groups: ["web"], ips: [ip("10.0.1.31")], interface: "tapweb1"))
        let reloads = f.daemon.currentStatus.documentReloads
        try await f.deliverInOneDrain(queued, holding: "admin")
        #expect(f.daemon.currentStatus.documentReloads == reloads + 1, "the refused plug reloads")
        let (equal, diff) = try f.committedAgainstStore()
        #expect(equal, "daemon → store: \(diff)")
        #expect(try f.kernelIR() == f.expected(), "the kernel holds what the store says (the revoke included)")
        #expect(f.daemon.currentStatus.lastError == nil, "\(f.daemon.currentStatus.lastError ?? "")")
        #expect(f.daemon.currentStatus.driftRepaired == 0)
    }

    /// Random controller verbs; after each, the fan-out for hv1 is delivered and the daemon's
    /// committed state must equal the compiled document of the store (the incremental paths and
    /// their fall-backs agree with a full recompile).
    // 48 seeds, half of them batched (~7 s): seed 276 batched found a bug only a coalesced drain
    // shows, on some runs; 300 seeds x 3 runs pass (docs/daemon.md).
    @Test(arguments: (40..<88).map { ($0, $0 % 2 == 0) })
    func randomVerbsConverge(seed: Int, batched: Bool) async throws {
        try await randomVerbs(seed: seed, batched: batched, reuseAddressesFromElsewhere: false)
    }

    /// The same, where a new instance here may also take the address of an instance removed
    /// from another host (a member elsewhere until its members refresh, later in the drain),
    /// and keeps a removed local instance's interface only half of the time.
    @Test(arguments: (40..<64).map { ($0, true) })
    func randomVerbsConvergeReusingAddresses(seed: Int, batched: Bool) async throws {
        try await randomVerbs(seed: seed, batched: batched, reuseAddressesFromElsewhere: true)
    }

    private func randomVerbs(seed: Int, batched: Bool, reuseAddressesFromElsewhere: Bool) async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        var rng = SplitMix(seed: UInt64(seed))
        let groups = ["web", "db", "admin", "g4", "g5"]
        for g in ["g4", "g5"] { _ = try f.store.createGroup(g, description: nil) }
        var next = 100
        var ids: [String] = ["web-1", "db-1", "bastion"]
        // Interfaces and addresses of instances removed from hv1: a new instance may take them
        // (in a batched drain, while the engine still gives them to the old one).
        var freed: [Instance] = []
        var queued: [Delivery] = []
        for step in 0..<150 {
            let op = rng.next() % 7
            var ds: [Delivery] = []
            do {
                switch op {
                case 0, 1:
                    next += 1
                    let host = ["hv1", "hv1", "hv2", "hv3"][Int(rng.next() % 4)]
                    let gs = Array(Set((0..<Int(rng.next() % 3)).map { _ in groups[Int(rng.next() % 5)] }))
                    let id = "i\(next)"
                    ds = try f.store.addInstance(id, Instance(host: host, groups: gs, ips: [ip("10.9.\(next / 250).\(next % 250 + 1)")], interface: "tap\(next)"))
                    ids.append(id)
                case 2:
                    guard !ids.isEmpty else { continue }
                    let id = ids.remove(at: Int(rng.next() % UInt64(ids.count)))
                    if let old = try f.store.instance(id), old.host == "hv1" || reuseAddressesFromElsewhere { freed.append(old) }
                    ds = try f.store.removeInstance(id)
                case 6:
                    guard !freed.isEmpty else { continue }
                    var taken = freed.removeFirst()
                    taken.groups = Array(Set((0..<Int(rng.next() % 3)).map { _ in groups[Int(rng.next() % 5)] }))
                    next += 1
                    if reuseAddressesFromElsewhere, taken.host != "hv1" || rng.next() % 2 == 0 { taken.interface = "tap\(next)" }
                    taken.host = "hv1"
                    // ids sort before the old ones ("a…" < "i…", "web-1"): their plug comes first
                    let id = "a\(next)"
                    ds = try f.store.addInstance(id, taken)
                    ids.append(id)
                case 3:
                    guard !ids.isEmpty else { continue }
                    let id = ids[Int(rng.next() % UInt64(ids.count))]
                    let gs = Array(Set((0..<Int(rng.next() % 3)).map { _ in groups[Int(rng.next() % 5)] }))
                    ds = try f.store.setGroups(instance: id, groups: gs)
                case 4:
                    let g = groups[Int(rng.next() % 5)]
                    let r = groups[Int(rng.next() % 5)]
                    let port = 1000 + Int(rng.next() % 50)
                    ds = try f.store.authorize(group: g, rule: try rule(#"{"protocol":"tcp","ports":"\#(port)","group":"\#(r)"}"#, g, refs: [r]))
                default:
                    let g = groups[Int(rng.next() % 5)]
                    guard let grp = try f.store.group(g), !grp.rules.isEmpty else { continue }
                    let victim = grp.rules[Int(rng.next() % UInt64(grp.rules.count))]
                    ds = try f.store.revoke(group: g, rule: victim, id: nil)
                }
            } catch let e as StoreError where e.kind == .conflict {
                continue
            }
            if batched {
                // several verbs' refreshes reach the daemon together: one drain, one batch
                queued += ds
                if step % 5 != 4 { continue }
                var last: UInt64 = 0
                for d in queued where d.host == f.daemon.host { last = f.daemon.enqueue(d.refresh) }
                queued = []
                let o = await f.daemon.wait(for: last)
                #expect(o != .failed("x") && { if case .committed = o { true } else { false } }(), "\(o)")
                // The kernel too, not only the engine: a drain whose Plan lost events leaves the
                // engine right and the kernel wrong.
                #expect(try f.kernelIR() == f.expected(), "seed \(seed) step \(step): the kernel differs from the store")
            } else {
                try await f.deliver(ds)
            }
            let want = try f.expected()
            #expect(f.daemon.engineCommittedForTesting == want,
                    "seed \(seed) step \(step) op \(op) \(ds): daemon → store: \(Render.plan(diff(from: f.daemon.engineCommittedForTesting, to: want)))")
        }
        var last: UInt64 = 0
        for d in queued where d.host == f.daemon.host { last = f.daemon.enqueue(d.refresh) }
        _ = await f.daemon.wait(for: last)
        #expect(try f.kernelIR() == f.expected())
    }

    @Test func aBurstOfRefreshesIsCoalesced() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        // 100 admin members appear in the store; then 1,000 refresh calls arrive at once.
        for i in 0..<100 {
            _ = try f.store.addInstance("adm\(i)", Instance(host: "hv\(2 + i % 5)", groups: ["admin"], ips: [ip("10.8.0.\(i + 1)")], interface: "tapa\(i)"))
        }
        let before = f.kernel.nft.committed.count
        var last: UInt64 = 0
        for i in 0..<1000 {
            last = f.daemon.enqueue(i % 2 == 0 ? .members("admin") : .members("web"))
        }
        let o = await f.daemon.wait(for: last)
        guard case .committed = o else { Issue.record("\(o)"); return }
        let commits = f.kernel.nft.committed.count - before
        #expect(commits >= 1 && commits <= 5, "\(commits) commits for 1,000 refresh calls")
        #expect(try f.kernelIR() == f.expected())
        #expect(f.daemon.currentStatus.refreshesReceived == 1000)
    }

    @Test func anotherWriterIsNoticedThroughTheGeneration() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        f.kernel.nft.bumpGeneration()  // someone committed elsewhere
        let ds = try f.store.addInstance("adm9", Instance(host: "hv9", groups: ["admin"], ips: [ip("10.8.9.9")], interface: "tapz"))
        try await f.deliver(ds)
        #expect(f.kernel.nft.offered.count == f.kernel.nft.committed.count + 1)  // one refused, then planned again
        #expect(try f.kernelIR() == f.expected())
    }

    @Test func driftIsRepairedByTheResync() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        f.kernel.nft.mutateTable(family: .inet, name: Naming.table) { t in
            t.rules["gin-web"]!.removeLast()
        }
        #expect(try f.kernelIR() != f.expected())
        let o = await f.daemon.resync()
        #expect(o != .failed(""))
        #expect(try f.kernelIR() == f.expected())
        #expect(f.daemon.currentStatus.driftRepaired > 0)
        #expect(f.daemon.metricsText().contains("rampart_drift_repaired_total"))
    }

    @Test func periodicResyncRunsOnItsOwn() async throws {
        let f = try Fixture(resync: 30, populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        f.kernel.nft.mutateTable(family: .inet, name: Naming.table) { t in
            t.rules["gin-db"]!.removeLast()
        }
        // 30 s pass on the daemon's clock: one resync, then the next is due at 60 s
        #expect(f.clock.waitForSleeper(at: 30))
        f.clock.advance(to: 30)
        #expect(f.clock.waitForSleeper(at: 60))
        #expect(f.daemon.currentStatus.driftRepaired > 0)
        #expect(f.daemon.currentStatus.resyncs == 1)
        #expect(try f.kernelIR() == f.expected())
    }

    @Test func badRequestsGetA4xxAndChangeNothing() async throws {
        let f = try Fixture(populate: Self.base)
        await f.start()
        defer { f.daemon.stop() }
        let api = APIRouter(daemon: f.daemon)
        let commits = f.kernel.nft.committed.count
        let cases: [(String, String, String, Int)] = [
            ("POST", "/v1/refresh/members/nope", "", 404),
            ("POST", "/v1/refresh/rules/nope", "", 404),
            ("GET", "/v1/refresh/members/web", "", 405),
            ("DELETE", "/v1/status", "", 405),
            ("POST", "/v1/refresh/members/bad%20id", "", 400),
            ("POST", "/v1/refresh/members/web", "{not json", 400),
            ("POST", "/v1/refresh/members/web", "[1,2]", 400),
            ("POST", "/v1/refresh/members/web", #"{"wait": true, "x": 1}"#, 400),
            ("POST", "/v1/refresh/nothing/web", "", 404),
            ("GET", "/v2/status", "", 404),
            ("GET", "/", "", 404),
        ]
        for (m, path, body, status) in cases {
            let r = await api.handle(method: m, uri: path, body: Array(body.utf8))
            #expect(r.status == status, "\(m) \(path) \(body): \(r.status) \(r.body)")
            #expect(r.body.hasPrefix("{\"error\":"), "\(r.body)")
        }
        #expect(f.kernel.nft.committed.count == commits)
        #expect(f.daemon.currentStatus.refreshesReceived == 0)
        // and it still serves
        let ok = await api.handle(method: "POST", uri: "/v1/refresh/members/web?wait=1", body: [])
        #expect(ok.status == 200)
        let queued = await api.handle(method: "POST", uri: "/v1/refresh/instance/web-1", body: [])
        #expect(queued.status == 202)
        let st = await api.handle(method: "GET", uri: "/v1/status", body: [])
        #expect(st.status == 200 && st.body.contains("\"ready\":true"))
        let m = await api.handle(method: "GET", uri: "/metrics", body: [])
        #expect(m.status == 200 && m.body.contains("rampart_sync_duration_seconds_bucket"))
    }

    @Test func statusIs503UntilTheFirstSync() async throws {
        let f = try Fixture(host: "hv1")
        // an unreachable kernel: the first sync fails
        let d = Daemon(configuration: .init(host: "hv1"), store: f.store, backend: { throw DaemonFailure(description: "no kernel") })
        d.start()
        defer { d.stop() }
        try await Task.sleep(for: .milliseconds(100))
        let r = await APIRouter(daemon: d).handle(method: "GET", uri: "/v1/status", body: [])
        #expect(r.status == 503)
        #expect(r.body.contains("no kernel"))
    }
}

/// A small deterministic generator.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
