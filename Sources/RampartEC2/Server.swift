import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import RampartHTTP
import RampartStore

/// The EC2 API over HTTP/1.1 on TCP (SwiftNIO), like the daemon's server: a body larger than
/// `maxBody` is refused (400, the rest of it discarded unread, then the connection closed); a connection
/// without a complete request within `idleTimeout` seconds of opening or of its last answer is
/// closed; beyond `maxConnections` a new connection is answered 503 and closed. Requests are
/// answered off the event loop (the store blocks).
public final class EC2Server: Sendable {
    public struct Limits: Sendable {
        public var maxBody: Int
        public var idleTimeout: Double
        public var maxConnections: Int
        public init(maxBody: Int = 1 << 20, idleTimeout: Double = 30, maxConnections: Int = 256) {
            self.maxBody = maxBody
            self.idleTimeout = idleTimeout
            self.maxConnections = max(1, maxConnections)
        }
    }

    /// How a request is authenticated: SigV4 against keys, or (`--no-auth`) every request as
    /// one fixed caller.
    public enum Auth: Sendable {
        case sigV4(Verifier)
        case none(Caller)
    }

    public let service: EC2Service
    public let auth: Auth
    public let limits: Limits
    private let cap: ConnectionCap
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channel = NIOLockedValueBox<Channel?>(nil)
    let logger: Logger

    public init(service: EC2Service, auth: Auth, limits: Limits = Limits(), logger: Logger = Logger(label: "rampart-api")) {
        self.service = service
        self.auth = auth
        self.limits = limits
        cap = ConnectionCap(maxConnections: limits.maxConnections, refusal: Self.refusal)
        self.logger = logger
    }

    /// Binds and starts accepting; returns the port bound (useful with port 0).
    public func start(host: String, port: Int) throws -> Int {
        let limits = self.limits
        let cap = self.cap
        let handler = RequestHandler(server: self)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                cap.initialize(channel) { HTTPHandler(handler: handler, limits: limits) }
            }
        let ch = try bootstrap.bind(host: host, port: port).wait()
        channel.withLockedValue { $0 = ch }
        return ch.localAddress?.port ?? port
    }

    public func stop() {
        let ch = channel.withLockedValue { c -> Channel? in defer { c = nil }; return c }
        try? ch?.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// Waits until the server's channel closes.
    public func wait() {
        let ch = channel.withLockedValue { $0 }
        try? ch?.closeFuture.wait()
    }
}

/// One request as received.
struct Request: Sendable {
    var method: String
    var uri: String
    var headers: [(String, String)]
    var body: [UInt8]
}

/// The answer: status and XML.
struct Answer: Sendable {
    var status: Int
    var body: String
}

/// Authentication, form, action: the protocol, independent of the transport.
struct RequestHandler: Sendable {
    let server: EC2Server

    func answer(_ r: Request) -> Answer {
        let requestID = UUID().uuidString.lowercased()
        do throws(EC2Error) {
            let caller: Caller
            switch server.auth {
            case .none(let c): caller = c
            case .sigV4(let v):
                let c = try v.verify(method: r.method, uri: r.uri, headers: r.headers, body: r.body)
                caller = Caller(account: c.account, region: c.region)
            }
            let (path, query) = Verifier.split(r.uri)
            guard path == "/" else { throw EC2Error("InvalidRequest", "The path must be /", status: 404) }
            let form: Form
            switch r.method {
            case "POST":
                guard query.isEmpty else { throw EC2Error.invalidParameter("POST parameters belong in the body, not the URL") }
                let type = r.headers.first { $0.0.lowercased() == "content-type" }?.1.lowercased() ?? ""
                guard type.hasPrefix("application/x-www-form-urlencoded") else {
                    throw EC2Error.invalidParameter("Content-Type must be application/x-www-form-urlencoded")
                }
                form = try Form(encoded: r.body)
            case "GET":
                guard r.body.isEmpty else { throw EC2Error.invalidParameter("a GET request has no body") }
                form = try Form(encoded: Array(query.utf8))
            default:
                throw EC2Error("InvalidRequest", "Method \(r.method) is not allowed (POST or GET)", status: 405)
            }
            return Answer(status: 200, body: try server.service.handle(form, caller: caller, requestID: requestID))
        } catch {
            if error.status >= 500 { server.logger.error("request \(requestID): \(error)") }
            return Answer(status: error.status, body: XMLWriter.error(error, requestID: requestID))
        }
    }
}

private final class HTTPHandler: IdleClosingHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let handler: RequestHandler
    let limits: EC2Server.Limits
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    /// The request was answered early (too large): the rest of it is ignored.
    private var refused = false
    let idle: IdleDeadline

    init(handler: RequestHandler, limits: EC2Server.Limits) {
        self.handler = handler
        self.limits = limits
        idle = IdleDeadline(seconds: limits.idleTimeout)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if refused {
            // The answer is out; the rest of the body is discarded, then the connection closed
            // (closing with the client still sending would reset it before it reads the answer).
            if case .end = part { context.close(promise: nil) }
            return
        }
        switch part {
        case .head(let h):
            head = h
            body = []
            if let n = h.headers.first(name: "content-length").flatMap(Int.init), n > limits.maxBody { refuseTooLarge(context) }
        case .body(var buf):
            if body.count + buf.readableBytes > limits.maxBody {
                refuseTooLarge(context)
            } else if let bytes = buf.readBytes(length: buf.readableBytes) {
                body += bytes
            }
        case .end:
            guard let h = head else { return }
            head = nil
            idle.begin()
            let req = Request(method: h.method.rawValue, uri: h.uri, headers: h.headers.map { ($0.name, $0.value) }, body: body)
            body = []
            let handler = self.handler
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let loop = context.eventLoop
            DispatchQueue.global().async {
                let a = handler.answer(req)
                loop.execute {
                    let (me, ctx) = bound.value
                    me.write(context: ctx, a, version: h.version, keepAlive: h.isKeepAlive)
                }
            }
        }
    }

    private func refuseTooLarge(_ context: ChannelHandlerContext) {
        refused = true
        let e = EC2Error.invalidParameter("The request body is larger than \(limits.maxBody) bytes")
        write(context: context, Answer(status: 400, body: XMLWriter.error(e, requestID: UUID().uuidString.lowercased())),
              version: head?.version ?? .http1_1, keepAlive: false, closeAfter: false)
        body = []
        idle.arm(context)  // a client that keeps sending is cut off at the idle timeout
    }

    func write(context: ChannelHandlerContext, _ a: Answer, version: HTTPVersion, keepAlive: Bool, closeAfter: Bool = true) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/xml;charset=UTF-8")
        headers.add(name: "Content-Length", value: String(a.body.utf8.count))
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: a.status), headers: headers))), promise: nil)
        var buf = context.channel.allocator.buffer(capacity: a.body.utf8.count)
        buf.writeString(a.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        idle.answered(context, keepAlive: keepAlive)
        if !keepAlive && closeAfter {
            let ch = context.channel
            done.whenComplete { _ in ch.close(promise: nil) }
        }
    }
}

extension EC2Server {
    /// The answer to a connection over the cap.
    static let refusal = ConnectionRefuser.serviceUnavailable(
        contentType: "text/xml", body: XMLWriter.error(EC2Error("Unavailable", "Too many connections; retry later", status: 503), requestID: "refused"))
}
