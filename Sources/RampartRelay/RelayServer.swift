import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import RampartHTTP
import RampartSystem

/// The relay's TCP listener: each connection is TLS (if configured), lines, then a
/// `RelayConnectionHandler` talking to the hub.
public final class RelayServer: @unchecked Sendable {
    public let hub: RelayHub
    let host: String
    let requestedPort: Int
    let tls: NIOSSLContext?
    let group: any EventLoopGroup
    /// Seconds a connection may take to say a valid `hello`.
    let helloTimeout: Double
    /// SO_SNDBUF of each connection, if set (tests shrink it to make a slow subscriber quick).
    let sendBuffer: Int?
    /// Connections that have not said a valid `hello` yet, and how many may wait at once.
    let waiting: WaitingConnections
    private var channel: (any Channel)?

    /// Connections open now that have not said a valid `hello` yet.
    public var connectionsWaiting: Int { waiting.now }

    /// Connections at most waiting for their `hello` at once, by default: far more than a
    /// fleet's daemons reconnecting together need (each says `hello` at once), few enough that
    /// unauthenticated peers cannot hold the relay's memory and descriptors.
    public static let defaultMaxWaiting = 1_024

    public init(hub: RelayHub, host: String, port: Int, tls: NIOSSLContext? = nil, group: any EventLoopGroup,
                helloTimeout: Double = 10, sendBuffer: Int? = nil, maxWaiting: Int = RelayServer.defaultMaxWaiting) {
        self.hub = hub
        self.host = host
        self.requestedPort = port
        self.tls = tls
        self.group = group
        self.helloTimeout = helloTimeout
        self.sendBuffer = sendBuffer
        waiting = WaitingConnections(limit: maxWaiting)
    }

    /// The TLS context of a PEM certificate chain and key (`--tls-cert`, `--tls-key`). The key
    /// is a secret like the token file and is read the same way (`SecretFile`: this user's,
    /// 0600 or stricter, not through a link): a key others can read lets them be the relay.
    public static func tlsContext(certificate: String, key: String) throws(RelayError) -> NIOSSLContext {
        let pem: String
        do { pem = try SecretFile.read(key, what: "the TLS key") } catch { throw RelayError("TLS: \(error.description)") }
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
            let privateKey = try NIOSSLPrivateKey(bytes: Array(pem.utf8), format: .pem)
            let config = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(privateKey))
            return try NIOSSLContext(configuration: config)
        } catch {
            throw RelayError("TLS: cannot use --tls-cert \(certificate) / --tls-key \(key): \(error)")
        }
    }

    /// Binds and starts accepting; returns the bound port (useful with port 0).
    @discardableResult
    public func start() throws(RelayError) -> Int {
        let hub = self.hub, tls = self.tls, timeout = helloTimeout, waiting = self.waiting
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // A daemon that vanished without a FIN is found by keepalive probes.
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
        if let sendBuffer { bootstrap = bootstrap.childChannelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(sendBuffer)) }
        bootstrap = bootstrap.childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maxLength: RelayMessage.maxDaemonLineBytes)))
                try channel.pipeline.syncOperations.addHandler(RelayConnectionHandler(hub: hub, helloTimeout: timeout, waiting: waiting))
            }
        }
        do {
            let ch = try bootstrap.bind(host: host, port: requestedPort).wait()
            channel = ch
            return ch.localAddress?.port ?? requestedPort
        } catch {
            throw RelayError("cannot listen on \(host):\(requestedPort): \(error)")
        }
    }

    /// Stops accepting and closes the listener (connections close with the event loops).
    public func stop() {
        try? channel?.close().wait()
        channel = nil
    }
}

/// How many connections are waiting for their `hello`, against a limit (shared by a server's
/// connections, on any event loop).
final class WaitingConnections: Sendable {
    let limit: Int
    private let count = NIOLockedValueBox(0)
    init(limit: Int) { self.limit = limit }
    /// Counts one more; false (nothing counted) if `limit` are waiting already.
    func enter() -> Bool {
        count.withLockedValue { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
    }
    func leave() { count.withLockedValue { $0 -= 1 } }
    var now: Int { count.withLockedValue { $0 } }
}

/// One connection: `hello` within the deadline (or `status`), then `subscribe` and `ack`s.
/// Anything else, or bad input, is answered with an `error` and the connection is closed.
final class RelayConnectionHandler: ChannelInboundHandler, IdleClosingHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let hub: RelayHub
    /// Until `hello`: a connection that says nothing valid is closed (RampartHTTP's deadline).
    let idle: IdleDeadline
    private var subscriber: Subscriber?
    let waiting: WaitingConnections
    /// Whether this connection is counted in `waiting` (from its start to its `hello`).
    private var counted = false

    init(hub: RelayHub, helloTimeout: Double, waiting: WaitingConnections) {
        self.hub = hub
        idle = IdleDeadline(seconds: helloTimeout)
        self.waiting = waiting
    }

    /// Arms the hello deadline (as `IdleClosingHandler` does) and counts the connection as
    /// waiting, or refuses it when `waiting.limit` are already.
    func channelActive(context: ChannelHandlerContext) {
        idle.arm(context)
        counted = waiting.enter()
        context.fireChannelActive()
        if !counted {
            refuse(context, "this relay has \(waiting.limit) connections waiting for their hello: try again or another relay")
        }
    }

    private func stopCounting() {
        if counted { waiting.leave() }
        counted = false
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = unwrapInboundIn(data)
        let message: RelayMessage
        do { message = try RelayMessage.parse(line) } catch {
            return refuse(context, error.description)
        }
        switch (message.op, subscriber) {
        case (.status, nil):
            var answer = RelayMessage(op: .status)
            answer.statistics = hub.statistics()
            let ch = context.channel
            context.writeAndFlush(wrapOutboundOut(answer.line(allocator: context.channel.allocator))).whenComplete { _ in ch.close(promise: nil) }
        case (.hello, nil):
            guard message.version == RelayMessage.version else {
                return refuse(context, "protocol version \(message.version.map(String.init) ?? "none"): this relay speaks \(RelayMessage.version)")
            }
            guard let host = message.host, !host.isEmpty, let token = message.token else { return refuse(context, "hello needs host and token") }
            switch hub.hello(host: host, token: token, channel: context.channel) {
            case .success(let sub):
                subscriber = sub
                idle.cancel()
                stopCounting()
            case .failure(let e):
                refuse(context, e.description)
            }
        case (.subscribe, let sub?):
            guard let host = message.host, let after = message.after else { return refuse(context, "subscribe needs host and after") }
            if let e = hub.subscribe(sub, host: host, after: after) { refuse(context, e.description) }
        case (.ack, let sub?):
            guard let seq = message.seq else { return refuse(context, "ack needs seq") }
            hub.ack(sub, seq)
        case (_, nil):
            refuse(context, "\(message.op.rawValue) before hello")
        case (_, _?):
            refuse(context, "unexpected \(message.op.rawValue) from a daemon")
        }
    }

    /// Answers `error` and closes.
    private func refuse(_ context: ChannelHandlerContext, _ why: String) {
        let ch = context.channel
        context.writeAndFlush(wrapOutboundOut(RelayMessage.error(why).line(allocator: ch.allocator))).whenComplete { _ in ch.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        idle.cancel()
        stopCounting()
        if let subscriber { hub.detach(subscriber) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        refuse(context, "\(error)")
    }
}
