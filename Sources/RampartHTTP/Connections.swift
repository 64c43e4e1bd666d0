import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

// What the daemon's API server and the EC2 API server share about connections: the idle
// deadline of a connection and the refusal of connections over the cap.

/// The deadline of one connection: closed when no complete request arrived within `seconds` of
/// its opening or of its last answer (bytes trickling in do not extend it), never while a
/// request is being answered. Used on the connection's event loop only.
public final class IdleDeadline {
    public let seconds: Double
    /// A request is being answered: the deadline does not apply.
    public private(set) var inFlight = false
    private var timer: Scheduled<Void>?

    public init(seconds: Double) { self.seconds = seconds }

    /// Starts (or restarts) the deadline from now.
    public func arm(_ context: ChannelHandlerContext) {
        timer?.cancel()
        guard seconds > 0 else { return }
        let ch = context.channel
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) {
            if !bound.value.inFlight { ch.close(promise: nil) }
        }
    }

    /// A complete request arrived: no deadline until it is answered.
    public func begin() {
        inFlight = true
        cancel()
    }

    /// The answer is written: the deadline runs again if the connection stays open.
    public func answered(_ context: ChannelHandlerContext, keepAlive: Bool) {
        inFlight = false
        if keepAlive { arm(context) }
    }

    public func cancel() {
        timer?.cancel()
        timer = nil
    }
}

/// A connection over the cap: answered `response` (a whole raw HTTP response) at once, before
/// reading anything, and closed.
public final class ConnectionRefuser: ChannelInboundHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer
    private let response: String
    private var refused = false

    public init(response: String) { self.response = response }

    /// The raw 503 answer with Retry-After: 1.
    public static func serviceUnavailable(contentType: String, body: String) -> String {
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: \(contentType)\r\nRetry-After: 1\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
    }

    public func channelActive(context: ChannelHandlerContext) {
        refuse(context)
        context.fireChannelActive()
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context) }
    }

    private func refuse(_ context: ChannelHandlerContext) {
        guard !refused else { return }
        refused = true
        var buf = context.channel.allocator.buffer(capacity: response.utf8.count)
        buf.writeString(response)
        let ch = context.channel
        context.writeAndFlush(wrapOutboundOut(buf)).whenComplete { _ in ch.close(promise: nil) }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// A connection handler whose connection closes when idle (`IdleDeadline`): the deadline is
/// armed when the connection becomes active (or the handler is added to an active one) and
/// cancelled when it goes away. Both servers' handlers take these three events from here.
public protocol IdleClosingHandler: ChannelInboundHandler {
    var idle: IdleDeadline { get }
}

extension IdleClosingHandler {
    public func channelActive(context: ChannelHandlerContext) {
        idle.arm(context)
        context.fireChannelActive()
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { idle.arm(context) }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        idle.cancel()
        context.fireChannelInactive()
    }
}

/// The open connections of a server and the cap beyond which a new one is refused: both
/// servers set their connections up through `initialize`.
public final class ConnectionCap: Sendable {
    public let maxConnections: Int
    /// The whole answer a refused connection gets before it is closed (`ConnectionRefuser`).
    public let refusal: String
    private let open = NIOLockedValueBox(0)

    public init(maxConnections: Int, refusal: String) {
        self.maxConnections = maxConnections
        self.refusal = refusal
    }

    /// Connections open now.
    public var openConnections: Int { open.withLockedValue { $0 } }

    /// Sets up a new connection: counted until it closes; over the cap, answered with the
    /// refusal and closed; else an HTTP/1.1 pipeline ending in `handler()`.
    public func initialize(_ channel: any Channel, handler: @escaping () -> any ChannelHandler) -> EventLoopFuture<Void> {
        let n = open.withLockedValue { $0 += 1; return $0 }
        channel.closeFuture.whenComplete { [open] _ in open.withLockedValue { $0 -= 1 } }
        let refusal = self.refusal
        return channel.eventLoop.makeCompletedFuture {
            if n > maxConnections {
                try channel.pipeline.syncOperations.addHandler(ConnectionRefuser(response: refusal))
                return
            }
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(handler())
        }
    }
}
