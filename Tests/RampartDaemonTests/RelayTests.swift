import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import RampartCore
import RampartDaemon
import RampartHarness
import RampartRelay
import RampartStore
import RampartSystem
import Testing

/// A relay in the test process: its own store connection, LISTEN and event loop (so that
/// killing it closes every connection it had, as a process exit would).
final class TestRelay: @unchecked Sendable {
    let hub: RelayHub
    let server: RelayServer
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let port: Int
    var endpoint: RelayEndpoint { RelayEndpoint(host: "127.0.0.1", port: port) }
    private var killed = false

    init(url: String, tokens: TokenFile, settings: RelayHub.Settings = .init(), sendBuffer: Int? = nil, tls: NIOSSLContext? = nil,
         helloTimeout: Double = 10, maxWaiting: Int = RelayServer.defaultMaxWaiting) throws {
        let location = try PostgresLocation(url: url)
        hub = RelayHub(log: try PostgresStore(location: location, migrate: false), wakeups: PostgresWakeups(location: location),
                       tokens: tokens, settings: settings, logger: Logger(label: "test-relay"))
        server = RelayServer(hub: hub, host: "127.0.0.1", port: 0, tls: tls, group: group, helloTimeout: helloTimeout, sendBuffer: sendBuffer,
                             maxWaiting: maxWaiting)
        hub.start()
        port = try server.start()
    }

    /// Stops accepting, closes every connection, stops reading the store.
    func kill() {
        guard !killed else { return }
        killed = true
        server.stop()
        try? group.syncShutdownGracefully()
        hub.stop()
    }

    deinit { kill() }
}

/// A test's cloud for the relay: a fresh database with groups whose members sit on hv1..hv3,
/// tokens for each host, and a controller connection for verbs.
final class RelayFixture: @unchecked Sendable {
    static let hosts = ["hv1", "hv2", "hv3"]
    let url: String
    let controller: PostgresStore
    let tokens: TokenFile
    let tokenPath: String
    var relays: [TestRelay] = []

    init(_ name: String) throws {
        url = try SharedPostgres.freshDatabase(name)
        controller = try PostgresStore(url: url, migrate: true)
        // g1: hv1 only; g2: hv2 only; g3: hv3 only; shared: hv1 and hv2.
        for g in ["g1", "g2", "g3", "shared"] { _ = try controller.createGroup(g, description: nil) }
        for (i, h) in Self.hosts.enumerated() {
            _ = try controller.addInstance("vm\(i + 1)", Instance(host: h, groups: ["g\(i + 1)"], ips: [ip("10.0.\(i + 1).1")], interface: "tap\(i + 1)"))
        }
        _ = try controller.addInstance("s1", Instance(host: "hv1", groups: ["shared"], ips: [ip("10.0.9.1")], interface: "taps1"))
        _ = try controller.addInstance("s2", Instance(host: "hv2", groups: ["shared"], ips: [ip("10.0.9.2")], interface: "taps2"))
        let text = Self.hosts.map { "\($0) token-of-\($0)-0123456789" }.joined(separator: "\n") + "\n"
        tokenPath = tempDir("relay") + "/tokens"
        _ = FileManager.default.createFile(atPath: tokenPath, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        tokens = try TokenFile(path: tokenPath)
    }

    func relay(settings: RelayHub.Settings = .init(), sendBuffer: Int? = nil) throws -> TestRelay {
        let r = try TestRelay(url: url, tokens: tokens, settings: settings, sendBuffer: sendBuffer)
        relays.append(r)
        return r
    }

    /// A relay that reconnects to the store within 0.2 s, and a session of `host` through it.
    func quicklyReconnectingRelay(following host: String, pollInterval: Double = 10) throws -> (TestRelay, SessionReader) {
        var settings = RelayHub.Settings()
        settings.maxBackoff = 0.2
        settings.pollInterval = pollInterval
        let relay = try self.relay(settings: settings)
        return (relay, try SessionReader(session(host, relays: [relay])))
    }

    func session(_ host: String, token: String? = nil, relays: [TestRelay]) -> RelaySession {
        RelaySession(host: host, token: token ?? tokens.tokens[host]!, relays: relays.map(\.endpoint))
    }

    /// A rules change on `group` (port `port`): one row for each host with a member.
    func verb(_ group: String, port: Int) throws {
        _ = try controller.authorize(group: group, rule: try rule(#"{"protocol":"tcp","ports":"\#(port)","cidr":"0.0.0.0/0"}"#, group))
    }

    /// The host's rows, read from the store (the truth).
    func truth(_ host: String) throws -> [LogEntry] { try controller.entries(host: host, after: 0, limit: 100_000).entries }

    deinit { for r in relays { r.kill() } }
}

/// Reads a host's rows from a relay session as the follower would: woken by its messages.
final class SessionReader: @unchecked Sendable {
    let session: RelaySession
    let host: String
    private let woken = DispatchSemaphore(value: 0)
    private(set) var rows: [LogEntry] = []
    private(set) var reloads = 0
    /// The position each reload moved to.
    private(set) var reloadedTo: [Int64] = []
    var position: Int64

    init(_ session: RelaySession, from position: Int64 = 0) throws {
        self.session = session
        host = session.host
        self.position = position
        try session.start { [woken] _ in woken.signal() }
    }

    /// Reads until `done` holds or `timeout` passes; returns whether it held.
    func read(until done: (SessionReader) -> Bool, timeout: Double = 10) throws -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while Date() < deadline {
            let page = try session.entries(host: host, after: position, limit: 1000)
            if page.trimmed {
                reloads += 1
                position = try session.entries(host: host, after: .max, limit: 0).head
                reloadedTo.append(position)
            } else if let last = page.entries.last {
                rows += page.entries
                position = last.sequence
                try session.recordApplied(host: host, sequence: position)
            }
            if done(self) { return true }
            _ = woken.wait(timeout: .now() + 0.2)
        }
        return done(self)
    }
}

/// A raw relay client, to say what a daemon never would.
final class LineClient {
    let client: LoopbackLineClient
    init(port: Int, receiveBuffer: Int? = nil) throws { client = try LoopbackLineClient(port: port, receiveBuffer: receiveBuffer) }
    func send(_ json: String) { client.send(json) }
    /// The next message; nil at EOF, timeout, or a line that is not one.
    func receive() -> RelayMessage? {
        guard let line = client.receiveLine() else { return nil }
        var buffer = ByteBufferAllocator().buffer(capacity: line.count)
        buffer.writeBytes(line)
        return try? RelayMessage.parse(buffer)
    }
}

@Suite("Relay (real PostgreSQL, in-process relays)", .serialized, .tags(.kernel), .rootOnly)
struct RelayTests {
    /// Each host gets exactly its own rows, in sequence order, and its acks reach the store.
    @Test func rowsReachExactlyTheirHostInOrder() throws {
        let f = try RelayFixture("relay_rows")
        let relay = try f.relay()
        let readers = try RelayFixture.hosts.map { try SessionReader(f.session($0, relays: [relay])) }
        // And a raw subscriber of hv2, to check the wire itself (the session would drop bad rows).
        let raw = try LineClient(port: relay.port)
        raw.send(#"{"op":"hello","version":1,"host":"hv2","token":"\#(f.tokens.tokens["hv2"]!)"}"#)
        #expect(raw.receive()?.op == .welcome)
        raw.send(#"{"op":"subscribe","host":"hv2","after":0}"#)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<40 { try f.verb(["g1", "g2", "g3", "shared"].randomElement(using: &rng)!, port: 1000 + i) }
        let head2 = try f.controller.entries(host: "hv2", after: .max, limit: 0).head
        var wire: [LogEntry] = [], through: Int64 = 0
        while through < head2, let m = raw.receive() {
            #expect(m.op == .rows && m.after == through, "each message starts where the last ended: \(m)")
            let rows = m.entries ?? []
            #expect(rows.allSatisfy { $0.sequence > through && $0.sequence <= (m.through ?? 0) }, "\(m)")
            wire += rows
            through = m.through ?? through
        }
        #expect(wire == (try f.truth("hv2")), "the wire carries hv2's rows once each, in order")
        for r in readers {
            let truth = try f.truth(r.host)
            #expect(!truth.isEmpty)
            #expect(try r.read(until: { $0.rows.count >= truth.count }), "\(r.host)")
            #expect(r.rows == truth, "\(r.host): the relay's rows are the store's, in order")
        }
        // Acks are written in batches: the store sees every host's last row as applied.
        #expect(eventually(5) {
            let p = (try? f.controller.progress(hosts: RelayFixture.hosts)) ?? []
            return p.count == 3 && p.allSatisfy { $0.applied == $0.head }
        })
        #expect(relay.hub.statistics().subscribers == 4, "three sessions and the raw subscriber")
    }

    /// The relay's one-statement reads and ack writes say what the per-host calls say: rows,
    /// heads, trimming, positions that never move back.
    @Test func batchedReadsAndAcksEqualPerHostCalls() throws {
        let f = try RelayFixture("relay_batch")
        for i in 0..<12 { try f.verb(["g1", "g2", "shared"][i % 3], port: 5000 + i) }
        _ = try f.controller.trim(maxAge: nil, keep: 3)
        let positions: [String: Int64] = ["hv1": 0, "hv2": try f.controller.entries(host: "hv2", after: .max, limit: 0).head - 2, "hv3": 0]
        for limit in [0, 1, 1000] {
            let batched = try f.controller.entries(positions: positions, limit: limit)
            #expect(Set(batched.keys) == Set(positions.keys))
            for (h, p) in positions {
                #expect(batched[h] == (try f.controller.entries(host: h, after: p, limit: limit)), "\(h) after \(p) limit \(limit)")
            }
        }
        #expect(try f.controller.entries(positions: ["hv1": 0], limit: 10)["hv1"]?.trimmed == true)
        try f.controller.recordApplied(["hv1": 7, "hv2": 3])
        try f.controller.recordApplied(["hv1": 5, "hv3": 2])
        let progress = Dictionary(uniqueKeysWithValues: try f.controller.progress(hosts: RelayFixture.hosts).map { ($0.host, $0.applied) })
        #expect(progress == ["hv1": 7, "hv2": 3, "hv3": 2])
    }

    /// A daemon (or anyone with its host's token) subscribes far past its host's head and
    /// acknowledges that: the store records the head, no more, so `--wait` and the status
    /// still see what the host has really applied once new rows come.
    @Test func anAcknowledgementPastTheHeadRecordsTheHead() throws {
        let f = try RelayFixture("relay_ackpast")
        let relay = try f.relay()
        let c = try LineClient(port: relay.port)
        c.send(#"{"op":"hello","version":1,"host":"hv2","token":"\#(f.tokens.tokens["hv2"]!)"}"#)
        c.send(#"{"op":"subscribe","host":"hv2","after":999999999999}"#)
        c.send(#"{"op":"ack","seq":999999999999}"#)
        let head = try f.controller.entries(host: "hv2", after: .max, limit: 0).head
        #expect(eventually(5) { relay.hub.statistics().acksWritten >= 1 })
        #expect(try f.controller.progress(hosts: ["hv2"]).first?.applied == head)
        try f.verb("shared", port: 5000)
        let next = try f.controller.entries(host: "hv2", after: .max, limit: 0).head
        #expect(next > head)
        #expect(try f.controller.progress(hosts: ["hv2"]).first!.applied < next, "the new row is not applied by anyone")
    }

    /// A wrong token, another host's token, another host's subscription: refused, named.
    @Test func wrongTokenOrAnotherHostIsRefused() throws {
        let f = try RelayFixture("relay_auth")
        let relay = try f.relay()
        #expect(throws: StoreError.self) { try f.session("hv1", token: "not-the-token-of-anyone", relays: [relay]).start { _ in } }
        do {
            try f.session("hv2", token: f.tokens.tokens["hv1"]!, relays: [relay]).start { _ in }
            Issue.record("hv1's token was accepted for hv2")
        } catch { #expect("\(error)".contains("only subscribe to its own host"), "\(error)") }
        do {
            try f.session("hv1", token: "wrong-token-0123456789", relays: [relay]).start { _ in }
            Issue.record("a wrong token was accepted")
        } catch { #expect("\(error)".contains("wrong token for host hv1"), "\(error)") }
        // Authenticated as hv1, subscribing to hv2.
        let c = try LineClient(port: relay.port)
        c.send(#"{"op":"hello","version":1,"host":"hv1","token":"\#(f.tokens.tokens["hv1"]!)"}"#)
        #expect(c.receive()?.op == .welcome)
        c.send(#"{"op":"subscribe","host":"hv2","after":0}"#)
        let refusal = c.receive()
        #expect(refusal?.op == .error && refusal?.message?.contains("only subscribe to its own host") == true, "\(String(describing: refusal))")
        #expect(c.receive() == nil, "the connection is closed after the refusal")
        // Group- or world-readable token files are refused.
        chmod(f.tokenPath, 0o640)
        #expect(throws: RelayError.self) { try TokenFile(path: f.tokenPath) }
        #expect(relay.hub.statistics().refused >= 4)
    }

    /// A relay at its subscriber cap refuses the next hello, naming it; a daemon that lists
    /// another relay goes there.
    @Test func fullRelaySendsTheDaemonToAnother() throws {
        let f = try RelayFixture("relay_full")
        var settings = RelayHub.Settings()
        settings.maxSubscribers = 1
        let a = try f.relay(settings: settings), b = try f.relay()
        let first = f.session("hv1", relays: [a])
        try first.start { _ in }
        do {
            try f.session("hv2", relays: [a]).start { _ in }
            Issue.record("a second subscriber was accepted over the cap of 1")
        } catch { #expect("\(error)".contains("this relay is full"), "\(error)") }
        let third = f.session("hv3", relays: [a, b])
        try third.start { _ in }
        #expect(third.relay == b.endpoint)
        #expect(a.hub.statistics().subscribers == 1)
        first.stop()
        third.stop()
    }

    /// A connection that says no hello is closed at the deadline; one that did is not.
    @Test func silentConnectionIsClosedAtTheHelloDeadline() throws {
        let f = try RelayFixture("relay_idle")
        let relay = try TestRelay(url: f.url, tokens: f.tokens, helloTimeout: 0.3)
        f.relays.append(relay)
        let silent = try LineClient(port: relay.port)
        let session = f.session("hv1", relays: [relay])
        try session.start { _ in }
        let t = Date()
        #expect(silent.receive() == nil, "closed without a word")
        #expect(Date().timeIntervalSince(t) < 3)
        Thread.sleep(forTimeInterval: 0.5)
        #expect(session.relay == relay.endpoint, "the daemon that said hello stays connected")
        #expect(relay.hub.statistics().subscribers == 1)
        session.stop()
    }

    /// Before its `hello` a connection is nobody: it may not make the relay buffer more than a
    /// daemon's longest line, and only so many may wait at once (the next is refused at once,
    /// naming why); a daemon's `hello` still gets through, and a waiting connection that goes
    /// frees its place.
    @Test func connectionsWithoutHelloAreBounded() throws {
        let f = try RelayFixture("relay_waiting")
        let relay = try TestRelay(url: f.url, tokens: f.tokens, helloTimeout: 5, maxWaiting: 2)
        f.relays.append(relay)
        let long = try LineClient(port: relay.port)
        long.send(String(repeating: "x", count: RelayMessage.maxDaemonLineBytes + 1024))
        let cut = long.receive()
        #expect(cut?.op == .error && cut?.message?.contains("longer than") == true, "\(String(describing: cut))")
        #expect(long.receive() == nil, "closed after the refusal")
        var silent = [try LineClient(port: relay.port), try LineClient(port: relay.port)]
        Thread.sleep(forTimeInterval: 0.2)
        let third = try LineClient(port: relay.port)
        let refusal = third.receive()
        #expect(refusal?.op == .error && refusal?.message?.contains("connections waiting for their hello") == true, "\(String(describing: refusal))")
        #expect(relay.server.connectionsWaiting == 2)
        // One waiting connection goes: its place is free, and a daemon says hello in it.
        silent.removeLast()
        Thread.sleep(forTimeInterval: 0.2)
        #expect(relay.server.connectionsWaiting == 1)
        let session = f.session("hv1", relays: [relay])
        try session.start { _ in }
        let deadline = Date().addingTimeInterval(5)
        while relay.hub.statistics().subscribers < 1 && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        #expect(relay.hub.statistics().subscribers == 1)
        #expect(relay.server.connectionsWaiting == 1, "a subscriber no longer counts as waiting")
        session.stop()
        _ = silent
    }

    /// One host's token cannot fill a relay: past `maxSubscribersPerHost` a `hello` closes that
    /// host's oldest connection (told why), the newest ones stay, and other hosts are untouched.
    @Test func oneHostCannotFillTheRelay() throws {
        let f = try RelayFixture("relay_perhost")
        let relay = try TestRelay(url: f.url, tokens: f.tokens)
        f.relays.append(relay)
        func hello(_ host: String) throws -> LineClient {
            let c = try LineClient(port: relay.port)
            c.send(#"{"op":"hello","version":1,"host":"\#(host)","token":"\#(f.tokens.tokens[host]!)"}"#)
            #expect(c.receive()?.op == .welcome)
            return c
        }
        let other = try hello("hv2")
        let clients = try (0..<5).map { _ in try hello("hv1") }
        // The first three were closed, each told why; the last two stay.
        for c in clients.prefix(3) {
            let last = c.receive()
            #expect(last?.op == .error && last?.message?.contains("another connection said hello as hv1") == true, "\(String(describing: last))")
            #expect(c.receive() == nil, "closed")
        }
        #expect(relay.hub.statistics().subscribers == 3, "two of hv1, one of hv2")
        // The newest hv1 connection still follows its host, and hv2 is untouched.
        clients[4].send(#"{"op":"subscribe","host":"hv1","after":0}"#)
        other.send(#"{"op":"subscribe","host":"hv2","after":0}"#)
        try f.verb("shared", port: 7000)
        #expect(clients[4].receive()?.op == .rows)
        #expect(other.receive()?.op == .rows)
    }

    /// PostgreSQL restarted under a relay: its subscribers stay connected, the relay listens
    /// again and relays the rows committed after the restart.
    @Test func relaySurvivesAStoreRestart() throws {
        let f = try RelayFixture("relay_pgrestart")
        let (relay, reader) = try f.quicklyReconnectingRelay(following: "hv1")
        try f.verb("g1", port: 8000)
        let before = try f.truth("hv1")
        #expect(try reader.read(until: { $0.rows.count >= before.count }))
        try SharedPostgres.cluster().restart()
        f.controller.disconnect()
        #expect(eventually(10) { (try? f.verb("g1", port: 8001)) != nil })
        let truth = try f.truth("hv1")
        #expect(try reader.read(until: { $0.rows.count >= truth.count }, timeout: 15))
        #expect(reader.rows == truth)
        #expect(relay.hub.statistics().connected)
        #expect(reader.session.relay == relay.endpoint, "the daemon's connection to the relay outlived the store's restart")
    }

    /// The relay's LISTEN connection killed, and kept from coming back, while verbs of hv1's
    /// group commit: their NOTIFYs are lost. Once it listens again the relay must read every
    /// window at once: no later NOTIFY names hv1, and its poll is a minute away.
    @Test func aLostListenIsReadAcrossAtOnce() throws {
        let f = try RelayFixture("relay_listen_lost")
        let (_, reader) = try f.quicklyReconnectingRelay(following: "hv1", pollInterval: 60)
        try f.verb("g1", port: 9000)
        let first = try f.truth("hv1").count
        #expect(try reader.read(until: { $0.rows.count >= first }))
        let database = String(URLComponents(string: f.url)!.path.dropFirst())
        let pg = try SharedPostgres.cluster()
        // New connections refused (the controller's stays): the LISTEN cannot come back yet.
        _ = try pg.psql("ALTER DATABASE \(database) WITH ALLOW_CONNECTIONS false")
        defer { _ = try? pg.psql("ALTER DATABASE \(database) WITH ALLOW_CONNECTIONS true") }
        let killed = try pg.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '\(database)' AND query LIKE 'LISTEN%'")
        #expect(killed.trimmingCharacters(in: .whitespacesAndNewlines) == "1", "\(killed)")
        for k in 0..<5 { try f.verb(k % 2 == 0 ? "g1" : "shared", port: 9001 + k) }
        Thread.sleep(forTimeInterval: 0.5)
        _ = try pg.psql("ALTER DATABASE \(database) WITH ALLOW_CONNECTIONS true")
        let truth = try f.truth("hv1")
        #expect(try reader.read(until: { $0.rows.count >= truth.count }, timeout: 8))
        #expect(reader.rows == truth, "every row once, in order, across the lost LISTEN")
    }

    /// A subscriber behind a trimmed log is told to reload, then follows from the head.
    @Test func subscriberBehindTrimmedLogReloads() throws {
        let f = try RelayFixture("relay_trim")
        for i in 0..<5 { try f.verb("g1", port: 2000 + i) }
        #expect(try f.controller.trim(maxAge: nil, keep: 1) >= 4)
        let relay = try f.relay()
        let r = try SessionReader(f.session("hv1", relays: [relay]), from: 0)
        #expect(try r.read(until: { $0.reloads == 1 }, timeout: 5))
        #expect(r.rows.isEmpty)
        try f.verb("g1", port: 2100)
        let head = try f.controller.entries(host: "hv1", after: .max, limit: 0).head
        #expect(try r.read(until: { $0.position == head }))
        #expect(r.rows.map(\.sequence) == [head], "after the reload only the new row comes")
        #expect(relay.hub.statistics().reloadsTrimmed == 1)
    }

    /// The daemon's side holds at most `maxBufferedRows` rows its follower has not taken: past
    /// that it drops them and has the follower reload (until 2026-12-04 it kept every row a
    /// relay sent, however many), then follows on.
    @Test func sessionHoldsBoundedRowsThenReloads() throws {
        let f = try RelayFixture("relay_session_cap")
        let relay = try f.relay()
        let session = f.session("hv1", relays: [relay])
        session.maxBufferedRows = 3
        let r = try SessionReader(session, from: try f.controller.entries(host: "hv1", after: .max, limit: 0).head)
        try f.verb("g1", port: 4000)
        #expect(try r.read(until: { $0.rows.count == 1 }))
        for i in 1...5 { try f.verb("g1", port: 4000 + i) }  // not read: they pile up in the session
        #expect(eventually(5) { session.bufferOverflows == 1 })
        let head = try f.controller.entries(host: "hv1", after: .max, limit: 0).head
        #expect(try r.read(until: { $0.reloads == 1 && $0.position == head }))
        // The rows that overflowed were not delivered: what came after the first row came after
        // the reload and lies past its position (rows that arrived after the overflow follow on).
        let reload = try #require(r.reloadedTo.first)
        #expect(r.rows.dropFirst().allSatisfy { $0.sequence > reload } && r.rows.count < 6, "\(r.rows.map(\.sequence)) after a reload to \(reload)")
        try f.verb("g1", port: 4100)
        let last = try #require(try f.truth("hv1").last).sequence
        #expect(try r.read(until: { $0.rows.last?.sequence == last }))
    }

    /// A subscriber that stops reading is cut off and told to reload; the others are not slowed.
    @Test func slowSubscriberDoesNotDelayOthers() throws {
        let f = try RelayFixture("relay_slow")
        var settings = RelayHub.Settings()
        settings.maxBufferedBytes = 8192
        let relay = try f.relay(settings: settings, sendBuffer: 4096)
        let slow = try LineClient(port: relay.port, receiveBuffer: 2048)
        slow.send(#"{"op":"hello","version":1,"host":"hv2","token":"\#(f.tokens.tokens["hv2"]!)"}"#)
        slow.send(#"{"op":"subscribe","host":"hv2","after":0}"#)
        let fast = try SessionReader(f.session("hv1", relays: [relay]))
        var worst = 0.0
        for i in 0..<300 {
            try f.verb("shared", port: 3000 + i)  // a row for hv1 and for hv2
            let head = try f.truth("hv1").last!.sequence
            let t = Date()
            #expect(try fast.read(until: { $0.position >= head }, timeout: 5))
            worst = max(worst, Date().timeIntervalSince(t))
        }
        print("relay: slowest delivery to the fast subscriber beside a stalled one: \(Int(worst * 1000)) ms")
        #expect(worst < 1.0)
        #expect(fast.rows == (try f.truth("hv1")))
        #expect(relay.hub.statistics().reloadsOverflow == 0, "nothing is dropped before the stalled one drains")
        // The stalled subscriber reads at last: what was queued, then a reload to the head that
        // follows on from the last message it got (a daemon ignores any other).
        var sawReload = false
        var through: Int64 = 0
        while let m = slow.receive() {
            if m.op == .reload {
                sawReload = true
                #expect(m.after == through, "the reload follows on from the last rows it was sent")
                break
            }
            if m.op == .rows, let t = m.through {
                #expect(m.after == through)
                through = t
            }
        }
        #expect(sawReload)
        #expect(relay.hub.statistics().reloadsOverflow == 1)
    }

    /// The follower (in-process daemon, memory kernel) through two relays: the relay it uses is
    /// killed, it moves to the other and converges with nothing lost.
    @Test func relayKilledDaemonFailsOverAndConverges() async throws {
        let f = try RelayFixture("relay_failover")
        let a = try f.relay(), b = try f.relay()
        let backend = MemoryBackend()
        let store = try PostgresStore(url: f.url, migrate: false)
        let daemon = Daemon(configuration: .init(host: "hv1", resyncInterval: 3600), store: store, backend: { backend })
        let session = f.session("hv1", relays: [a, b])
        var settings = ChangeLogFollower.Settings()
        settings.pollInterval = 60
        settings.maxBackoff = 0.2
        let follower = ChangeLogFollower(daemon: daemon, log: session, wakeups: session, settings: settings, logger: Logger(label: "test"))
        try follower.prime()
        daemon.start()
        await daemon.waitUntilReady()
        follower.start()
        defer {
            follower.stop()
            daemon.stop()
        }
        func converged() -> Bool {
            guard let head = try? f.truth("hv1").last?.sequence, let p = try? f.controller.progress(hosts: ["hv1"]).first else { return false }
            guard let document = try? f.controller.document(forHost: "hv1") else { return false }
            return p.applied >= head && backend.kernel == Compiler.compile(document)
        }
        for i in 0..<5 { try f.verb("g1", port: 4000 + i) }
        #expect(eventually(10, converged))
        let first = try #require(session.relay)
        let (dead, other) = first == a.endpoint ? (a, b) : (b, a)
        dead.kill()
        for i in 0..<10 { try f.verb(i % 2 == 0 ? "g1" : "shared", port: 4100 + i) }
        #expect(eventually(15, converged), "hv1 converges through the other relay")
        #expect(session.relay == other.endpoint)
        #expect(daemon.currentStatus.changeLog?.reloads == 0, "caught up from its position, no reload")
    }

    /// The real rampartd in a network namespace follows hv1 through a relay: a real verb with
    /// `--wait` returns once the daemon's ack, relayed and batched, is in the store, and the
    /// kernel equals the host's compiled document.
    @Test func rampartdFollowsThroughARelay() throws {
        let f = try RelayFixture("relay_rampartd")
        let relay = try f.relay()
        let dir = tempDir("relayd")
        let tokenFile = dir + "/hv1.token"
        _ = FileManager.default.createFile(atPath: tokenFile, contents: Data("hv1 \(f.tokens.tokens["hv1"]!)\n".utf8), attributes: [.posixPermissions: 0o600])
        let ns = try TestNamespace(prefix: "rly")
        let d = try DaemonProcessTests.DaemonProcess(host: "hv1", store: f.url, socket: dir + "/hv1.sock", netns: ns.name,
                                                     extra: ["--relay", "127.0.0.1:\(relay.port)", "--relay-token-file", tokenFile])
        defer { _ = d.terminate() }
        // A relay at a network address over plain TCP: refused before anything is opened,
        // unless asked for (a loopback relay, as here, needs neither).
        for (address, reason) in [("192.0.2.1:7946", "192.0.2.1:7946"), ("[2001:db8::1]:7946", "[2001:db8::1]:7946")] {
            let r = try runCommand(["timeout", "20", executable("rampartd"), "--host", "hv1", "--store", f.url, "--socket", dir + "/refused.sock",
                                    "--netns", ns.name, "--relay", address, "--relay-token-file", tokenFile])
            #expect(r.status == 1 && r.stderr.contains("--relay \(reason) without --relay-ca") && r.stderr.contains("--relay-plaintext"), "\(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/refused.sock"))
        #expect(eventually(5) { relay.hub.statistics().subscribers == 1 })
        let r = try runCommand([executable("rampart"), "group", "authorize", "g1", "--protocol", "tcp", "--ports", "22",
                                "--cidr", "0.0.0.0/0", "--store", f.url, "--wait", "--timeout", "10"])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.contains("applied on hv1"), "\(r.stdout)")
        #expect(try kernelMatches(try f.controller.document(forHost: "hv1"), netns: ns.name))
        #expect(relay.hub.statistics().acksWritten >= 1)
    }

    /// The `rampart-relay` executable: refuses a token file others can read (exit 1, the reason),
    /// then, with a 0600 file, relays a verb's row to a subscriber and stops on SIGTERM (exit 0).
    @Test func relayProcessRefusesUnsafeTokensAndRelays() throws {
        let f = try RelayFixture("relay_process")
        let port = try freeLoopbackPort()
        let unsafe = tempDir("relayp") + "/tokens"
        _ = FileManager.default.createFile(atPath: unsafe, contents: FileManager.default.contents(atPath: f.tokenPath), attributes: [.posixPermissions: 0o644])
        let refused = try runCommand(["timeout", "20", executable("rampart-relay"), "--store", f.url, "--token-file", unsafe, "--listen", "127.0.0.1:\(port)"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("it must be 0600"), "\(refused.stderr)")
        // Plain TCP on a network address: only with --plaintext (tokens would cross in clear).
        let exposed = try runCommand(["timeout", "20", executable("rampart-relay"), "--store", f.url, "--token-file", f.tokenPath, "--listen", "0.0.0.0:\(port)"])
        #expect(exposed.status == 1)
        #expect(exposed.stderr.contains("--listen 0.0.0.0:\(port) without TLS") && exposed.stderr.contains("--plaintext"), "\(exposed.stderr)")
        let metricsPort = try freeLoopbackPort()
        let relay = try Command([executable("rampart-relay"), "--store", f.url, "--token-file", f.tokenPath, "--listen", "127.0.0.1:\(port)",
                                 "--metrics", "127.0.0.1:\(metricsPort)", "--log-level", "warning"], output: .inherit).spawn()
        defer { relay.signal(SIGKILL); _ = try? relay.wait() }
        #expect(eventually(10) {
            guard let c = try? LineClient(port: port) else { return false }
            c.send(#"{"op":"status"}"#)
            return c.receive()?.statistics?.connected == true
        })
        let reader = try SessionReader(RelaySession(host: "hv3", token: f.tokens.tokens["hv3"]!, relays: [RelayEndpoint(host: "127.0.0.1", port: port)]))
        try f.verb("g3", port: 6000)
        let truth = try f.truth("hv3")
        #expect(try reader.read(until: { $0.rows.count >= truth.count }))
        #expect(reader.rows == truth)
        // --metrics serves the same counters to a scraper.
        let metrics = try RelayMetricsTests.get(port: metricsPort, path: "/metrics")
        #expect(RelayMetricsTests.value(metrics, "rampart_relay_subscribers") == 1, "\(metrics)")
        #expect(RelayMetricsTests.value(metrics, "rampart_relay_rows_sent_total") >= truth.count)
        relay.signal(SIGTERM)
        #expect((try? relay.wait(timeout: 10)) == 0)
    }

    /// TLS: a relay with a certificate for "localhost" (from a throwaway CA made with openssl)
    /// relays to a session that trusts the CA; a session trusting another CA is refused, and so
    /// is one that names the relay by a name the certificate does not carry.
    @Test func tlsRelaysToATrustingSessionOnly() throws {
        let f = try RelayFixture("relay_tls")
        let pki = try ThrowawayPKI()
        defer { pki.remove() }
        let dir = pki.directory
        try pki.certificate("relay", commonName: "localhost", altNames: ["DNS:localhost"])
        // The key is a secret: one others can read is refused, naming its mode.
        chmod("\(dir)/relay.key", 0o644)
        #expect {
            _ = try RelayServer.tlsContext(certificate: "\(dir)/relay.pem", key: "\(dir)/relay.key")
        } throws: { ($0 as? RelayError)?.description.contains("the TLS key \(dir)/relay.key has mode 0644") == true }
        chmod("\(dir)/relay.key", 0o600)
        let relay = try TestRelay(url: f.url, tokens: f.tokens, tls: try RelayServer.tlsContext(certificate: "\(dir)/relay.pem", key: "\(dir)/relay.key"))
        f.relays.append(relay)
        let good = RelaySession(host: "hv1", token: f.tokens.tokens["hv1"]!, relays: [RelayEndpoint(host: "localhost", port: relay.port)],
                                tls: try RelaySession.tlsContext(caFile: "\(dir)/ca.pem"))
        let reader = try SessionReader(good)
        try f.verb("g1", port: 7000)
        let truth = try f.truth("hv1")
        #expect(try reader.read(until: { $0.rows.count >= truth.count }))
        #expect(reader.rows == truth)
        let untrusted = RelaySession(host: "hv2", token: f.tokens.tokens["hv2"]!, relays: [RelayEndpoint(host: "localhost", port: relay.port)],
                                     tls: try RelaySession.tlsContext(caFile: "\(dir)/other.pem"))
        #expect(throws: StoreError.self) { try untrusted.start { _ in } }
        let wrongName = RelaySession(host: "hv2", token: f.tokens.tokens["hv2"]!, relays: [RelayEndpoint(host: "relay.invalid", port: relay.port)],
                                     tls: try RelaySession.tlsContext(caFile: "\(dir)/ca.pem"))
        #expect(throws: StoreError.self) { try wrongName.start { _ in } }
        // A plain-TCP client gets nothing readable from a TLS relay.
        let plain = try LineClient(port: relay.port)
        plain.send(#"{"op":"status"}"#)
        #expect(plain.receive()?.op != .status)
        #expect(relay.hub.statistics().subscribers == 1)
    }
}

/// Relay addresses: parsing, and which count as loopback (plain TCP allowed without asking).
@Suite struct RelayEndpointTests {
    @Test func parsesAndTellsLoopback() throws {
        #expect(try RelayEndpoint("[::1]:7946") == RelayEndpoint(host: "::1", port: 7946))
        #expect(try RelayEndpoint("relay.example:443").host == "relay.example")
        #expect(throws: RelayError.self) { try RelayEndpoint("relay.example") }
        #expect(throws: RelayError.self) { try RelayEndpoint("[::1]7946") }
        #expect(throws: RelayError.self) { try RelayEndpoint("host:70000") }
        for loop in ["localhost:1", "127.0.0.1:1", "127.9.8.7:1", "[::1]:1", "[0:0:0:0:0:0:0:1]:1"] {
            #expect(try RelayEndpoint(loop).isLoopback, "\(loop)")
        }
        for net in ["0.0.0.0:1", "10.0.0.1:1", "128.0.0.1:1", "[::]:1", "[::2]:1", "[::ffff:127.0.0.1]:1", "relay.example:1", "localhost.evil:1"] {
            #expect(!(try RelayEndpoint(net).isLoopback), "\(net)")
        }
    }
}
