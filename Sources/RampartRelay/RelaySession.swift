import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import RampartCore
import RampartStore

/// A relay's address, `HOST:PORT` (`[V6]:PORT` for an IPv6 literal).
public struct RelayEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`; the error names what is wrong.
    public init(_ text: String) throws(RelayError) {
        var h = Substring(text), p = Substring("")
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            h = text[text.index(after: text.startIndex)..<close]
            p = text[close...].dropFirst().drop(while: { $0 == ":" })
            guard text[close...].dropFirst().first == ":" else { throw RelayError("relay \(text): expected [ADDRESS]:PORT") }
        } else if let colon = text.lastIndex(of: ":") {
            h = text[..<colon]
            p = text[text.index(after: colon)...]
        }
        guard !h.isEmpty, let port = Int(p), (1...65535).contains(port) else { throw RelayError("relay \(text): expected HOST:PORT with a port from 1 to 65535") }
        self.init(host: String(h), port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Whether the address is this machine's loopback (`localhost`, 127.0.0.0/8, `::1`): the
    /// only place where plain TCP keeps a host's token and rows off the network.
    public var isLoopback: Bool { host == "localhost" || IPAddress(host)?.isLoopback == true }
}

/// The daemon's side of a relay: its host's change log as the relays stream it. It is both the
/// `ChangeLog` and the `ChangeWakeups` of a `ChangeLogFollower`, which then runs unchanged:
/// `entries` answers from the rows streamed after the position (subscribing from it on the
/// first read, or when asked for an older one), `recordApplied` acknowledges to the relay (which
/// writes it to the store in batches), and a wake-up comes with every message. The host's
/// document is still read from the store.
///
/// Relays are tried in an order fixed by the host's name (so a fleet spreads over them, and a
/// host comes back to the same one); when the connection is lost the follower is told
/// (`.lost`), reconnects with its backoff to the first relay that answers, and subscribes from
/// its applied position: nothing is lost. docs/relay.md.
public final class RelaySession: ChangeLog, ChangeWakeups, @unchecked Sendable {
    public let host: String
    public let relays: [RelayEndpoint]
    let token: String
    let tls: NIOSSLContext?
    let group: any EventLoopGroup
    /// Seconds to wait for a relay's TCP connection, its `welcome`, or its first answer to a
    /// subscription.
    public var timeout: Double = 3
    /// Rows held for the follower at most: past it the session drops them and has the follower
    /// reload the document (as for a relay's `reload`), so a burst the daemon applies slower
    /// than it arrives, or a relay that floods, costs one reload instead of unbounded memory.
    public var maxBufferedRows = 100_000

    private let condition = NSCondition()
    // Guarded by `condition`:
    private var channel: (any Channel)?
    private var generation = 0
    private var handler: (@Sendable (Wakeup) -> Void)?
    private var welcomed: Int64?
    private var refusal: String?
    private var knownHead: Int64 = 0
    /// Rows after this position are streamed (nil: not subscribed on this connection).
    private var streamFrom: Int64?
    /// The last position the stream covers: the next message must start here.
    private var through: Int64 = 0
    private var buffer: [LogEntry] = []
    private var answered = false
    private var reloadPending = false
    private var connectedTo: RelayEndpoint?
    private var overflows = 0

    /// How often the rows waiting for the follower passed `maxBufferedRows` (each time: a reload).
    public var bufferOverflows: Int { condition.withLock { overflows } }

    /// `token`: this host's, as in the relays' token file. `tls`: a client context (the relays'
    /// CA) or nil for plain TCP.
    public init(host: String, token: String, relays: [RelayEndpoint], tls: NIOSSLContext? = nil,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.host = host
        self.token = token
        // Spread hosts over the relays, each host always in the same order (FNV-1a: stable
        // across processes, unlike Hasher).
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in host.utf8 { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 }
        let k = relays.isEmpty ? 0 : Int(hash % UInt64(relays.count))
        self.relays = Array(relays[k...] + relays[..<k])
        self.tls = tls
        self.group = group
    }

    /// A TLS client context trusting `caFile` (PEM); relay names are verified against it.
    public static func tlsContext(caFile: String) throws(RelayError) -> NIOSSLContext {
        var config = TLSConfiguration.makeClientConfiguration()
        config.trustRoots = .file(caFile)
        do { return try NIOSSLContext(configuration: config) } catch { throw RelayError("TLS: cannot use the CA file \(caFile): \(error)") }
    }

    /// The relay connected to now, if any.
    public var relay: RelayEndpoint? { condition.withLock { connectedTo } }

    // MARK: ChangeWakeups

    public func start(_ handler: @escaping @Sendable (Wakeup) -> Void) throws(StoreError) {
        let live = condition.withLock { () -> Bool in
            self.handler = handler
            return channel != nil
        }
        if !live { try connect() }
    }

    public func stop() {
        let c: (any Channel)? = condition.withLock {
            handler = nil
            return drop()
        }
        c?.close(promise: nil)
    }

    // MARK: ChangeLog

    public func entries(host: String, after sequence: Int64, limit: Int) throws(StoreError) -> LogPage {
        guard host == self.host else { throw StoreError(.invalid, "relay: this session follows host \(self.host), not \(host)") }
        if condition.withLock({ channel == nil }) { try connect() }
        condition.lock()
        defer { condition.unlock() }
        return try page(host: host, after: sequence, limit: limit)
    }

    /// `entries`, under the lock.
    private func page(host: String, after sequence: Int64, limit: Int) throws(StoreError) -> LogPage {
        if sequence == Int64.max && limit == 0 { return LogPage(entries: [], head: knownHead, trimmed: false) }
        if reloadPending {
            reloadPending = false
            return LogPage(entries: [], head: knownHead, trimmed: true)
        }
        if streamFrom == nil || sequence < streamFrom! {
            guard let c = channel else { throw StoreError(.unavailable, "relay: the connection closed") }
            streamFrom = sequence
            through = sequence
            buffer = []
            answered = false
            c.writeAndFlush(RelayMessage.subscribe(host: host, after: sequence).line(allocator: c.allocator), promise: nil)
            let deadline = Date(timeIntervalSinceNow: timeout)
            let mine = generation
            while !answered && generation == mine && condition.wait(until: deadline) {}
            guard answered, generation == mine else {
                let relay = connectedTo.map(\.description) ?? "the relay"
                // Off the event loop (the follower's thread): this close does not run at once.
                drop()?.close(promise: nil)
                throw StoreError(.unavailable, "relay: no answer to the subscription from \(relay)\(refusal.map { ": \($0)" } ?? "")")
            }
            if reloadPending {
                reloadPending = false
                return LogPage(entries: [], head: knownHead, trimmed: true)
            }
        }
        // What the follower has applied is not needed again.
        if let i = buffer.firstIndex(where: { $0.sequence > sequence }) { buffer.removeFirst(i) } else { buffer = [] }
        return LogPage(entries: Array(buffer.prefix(limit)), head: max(knownHead, through), trimmed: false)
    }

    public func recordApplied(host: String, sequence: Int64) throws(StoreError) {
        guard host == self.host else { throw StoreError(.invalid, "relay: this session follows host \(self.host), not \(host)") }
        guard let c = condition.withLock({ channel }) else { throw StoreError(.unavailable, "relay: not connected; the position is acknowledged after reconnecting") }
        c.writeAndFlush(RelayMessage.ack(sequence).line(allocator: c.allocator), promise: nil)
    }

    /// The fleet's progress is the controller's question: it reads the store (`rampart changelog status`).
    public func progress(hosts: [String]?) throws(StoreError) -> [LogProgress] {
        throw StoreError(.invalid, "relay: a daemon's relay session serves its own host's rows only; read progress from the store")
    }

    /// Trimming is the controller's job (`rampart changelog trim`), on the store.
    public func trim(maxAge: Int?, keep: Int?) throws(StoreError) -> Int {
        throw StoreError(.invalid, "relay: trim the log on the store (`rampart changelog trim`), not through a relay")
    }

    // MARK: connection

    /// Connects to the first relay (in this host's order) that welcomes it.
    private func connect() throws(StoreError) {
        var errors: [String] = []
        for relay in relays {
            do {
                try connect(to: relay)
                return
            } catch {
                errors.append("\(relay): \(error.description)")
            }
        }
        throw StoreError(.unavailable, "relay: no relay welcomed host \(host): " + errors.joined(separator: "; "))
    }

    private func connect(to relay: RelayEndpoint) throws(RelayError) {
        let mine: Int = condition.withLock {
            let old = drop()
            old?.close(promise: nil)
            generation += 1
            welcomed = nil
            refusal = nil
            return generation
        }
        let tls = self.tls
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.milliseconds(Int64(timeout * 1000)))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { [weak self] channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: relay.host.contains(":") ? nil : relay.host)) }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(RelayClientHandler(session: self, generation: mine))
                }
            }
        let c: any Channel
        do { c = try bootstrap.connect(host: relay.host, port: relay.port).wait() } catch {
            throw RelayError("cannot connect: \(error)")
        }
        let outcome = condition.withLock { () -> String? in
            guard generation == mine else { return "superseded" }
            channel = c
            c.writeAndFlush(RelayMessage.hello(host: host, token: token).line(allocator: c.allocator), promise: nil)
            let deadline = Date(timeIntervalSinceNow: timeout)
            while welcomed == nil && refusal == nil && generation == mine && condition.wait(until: deadline) {}
            if let welcomed, generation == mine {
                knownHead = max(knownHead, welcomed)
                connectedTo = relay
                return nil
            }
            let why = refusal ?? (generation == mine ? "no welcome within \(timeout) s" : "the connection closed")
            if generation == mine { _ = drop() }
            return why
        }
        if let outcome {
            c.close(promise: nil)
            throw RelayError(outcome)
        }
    }

    /// Forgets the connection (under the lock); returns it for closing outside.
    private func drop() -> (any Channel)? {
        defer {
            channel = nil
            connectedTo = nil
            streamFrom = nil
            buffer = []
            answered = false
            generation += 1
            condition.broadcast()
        }
        return channel
    }

    /// A message of connection `mine`.
    fileprivate func received(_ m: RelayMessage, generation mine: Int) {
        // Closed outside the lock: on its own event loop a close runs at once, and `closed` takes the lock.
        var toClose: (any Channel)?
        let (wake, why): ((@Sendable (Wakeup) -> Void)?, Wakeup?) = condition.withLock {
            guard generation == mine else { return (nil, nil) }
            defer { condition.broadcast() }
            if let h = m.head { knownHead = max(knownHead, h) }
            switch m.op {
            case .welcome:
                welcomed = m.head ?? 0
                return (nil, nil)
            case .error:
                refusal = m.message ?? "refused"
                return (nil, nil)
            case .rows, .reload:
                // Continuity: a message of an earlier subscription on this connection is stale.
                guard streamFrom != nil, m.after == through, let t = m.through else { return (nil, nil) }
                // Rows must lie in (after, through], strictly increasing: anything else is a relay
                // that cannot be trusted with the order, so the connection is given up (the
                // follower reconnects and subscribes again from its position).
                let seqs = (m.rows ?? []).map(\.seq)
                guard t >= through, seqs.allSatisfy({ $0 > through && $0 <= t }), zip(seqs, seqs.dropFirst()).allSatisfy({ $0 < $1 }) else {
                    refusal = "relay sent rows out of order"
                    toClose = drop()
                    return (handler, .lost("relay sent rows out of order"))
                }
                answered = true
                through = t
                if m.op == .reload {
                    buffer = []
                    streamFrom = t
                    reloadPending = true
                } else if let rows = m.entries, buffer.count + rows.count <= maxBufferedRows {
                    buffer += rows
                } else if m.entries != nil {
                    // Too far behind to hold: reload (the log stays the truth).
                    buffer = []
                    streamFrom = t
                    reloadPending = true
                    overflows += 1
                } else {
                    // A refresh this version cannot read: reload, as for such a row in the store.
                    buffer = []
                    streamFrom = t
                    reloadPending = true
                }
                return (handler, .appended(hosts: [host]))
            default:
                return (nil, nil)
            }
        }
        toClose?.close(promise: nil)
        if let why { wake?(why) }
    }

    /// Connection `mine` closed.
    fileprivate func closed(generation mine: Int) {
        let wake: (@Sendable (Wakeup) -> Void)? = condition.withLock {
            guard generation == mine else { return nil }
            let relay = connectedTo
            _ = drop()
            if let relay { refusal = refusal ?? "relay \(relay) closed the connection" }
            return handler
        }
        wake?(.lost(condition.withLock { refusal } ?? "relay connection closed"))
    }
}

/// Lines from the relay to the session.
private final class RelayClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    weak var session: RelaySession?
    let generation: Int

    init(session: RelaySession?, generation: Int) {
        self.session = session
        self.generation = generation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let m = try? RelayMessage.parse(unwrapInboundIn(data)) else {
            // A relay speaking something else: drop it, the follower reconnects.
            context.close(promise: nil)
            return
        }
        session?.received(m, generation: generation)
    }

    func channelInactive(context: ChannelHandlerContext) {
        session?.closed(generation: generation)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
