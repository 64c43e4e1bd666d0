import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import RampartHTTP

/// The relay's counters in Prometheus' text format (version 0.0.4), for `GET /metrics`.
///
/// Counters end in `_total` (rates are the scraper's: `rate(rampart_relay_rows_sent_total[1m])`
/// is rows/s); gauges say what is now. Per-host lag is a gauge labelled by host **only for
/// subscribers that are behind** (at most `laggingLimit`, the furthest behind first): a healthy
/// fleet of 10,000 hosts adds no series, and a lagging one adds the hosts an operator must see.
public enum RelayMetrics {
    /// The most hosts listed by `rampart_relay_host_lag_rows`.
    public static let laggingLimit = 100

    public static func text(_ s: RelayStatistics, lagging: [(host: String, rows: Int64)]) -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: String)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { out += "\(name)\(labels) \(value)\n" }
        }
        func one(_ name: String, _ type: String, _ help: String, _ value: Int) { metric(name, type, help, [("", String(value))]) }
        one("rampart_relay_subscribers", "gauge", "Connections that said a valid hello.", s.subscribers)
        one("rampart_relay_hosts", "gauge", "Hosts with a window of their log in memory.", s.hosts)
        one("rampart_relay_connected", "gauge", "1 when the store answers and the LISTEN is up.", s.connected ? 1 : 0)
        one("rampart_relay_subscribers_behind", "gauge", "Subscribers whose last ack is behind the last row sent to them.", s.behind)
        one("rampart_relay_max_unacked_rows", "gauge", "The most rows sent to one subscriber and not acknowledged.", s.maxUnackedRows)
        one("rampart_relay_rows_read_total", "counter", "Change-log rows read from the store.", s.rowsRead)
        one("rampart_relay_rows_sent_total", "counter", "Change-log rows sent to subscribers.", s.rowsSent)
        one("rampart_relay_store_reads_total", "counter", "Statements sent to the store to read the log.", s.storeReads)
        one("rampart_relay_acks_written_total", "counter", "Acknowledged positions written to the store.", s.acksWritten)
        one("rampart_relay_ack_writes_total", "counter", "Statements that wrote acknowledged positions.", s.ackWrites)
        metric("rampart_relay_reloads_total", "counter", "Reload instructions sent, by reason.",
               [("{reason=\"trimmed\"}", String(s.reloadsTrimmed)), ("{reason=\"overflow\"}", String(s.reloadsOverflow))])
        one("rampart_relay_refused_total", "counter", "Connections refused (bad token, another host, over the cap, bad input).", s.refused)
        metric("rampart_relay_host_lag_rows", "gauge", "Rows sent to a lagging host's subscriber and not acknowledged (only hosts behind).",
               lagging.map { ("{host=\"\(escape($0.host))\"}", String($0.rows)) })
        return out
    }

    /// A label value as the text format wants it.
    static func escape(_ v: String) -> String {
        v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}

/// `GET /metrics` over plain HTTP/1.1 on its own address (`rampart-relay --metrics`): the relay's
/// counters for a Prometheus scraper. Anything else is 404 (405 for another method); a request
/// body is ignored; each answer closes the connection. Like the daemon's and the EC2 API's
/// servers (RampartHTTP): at most `maxConnections` at once (the next is answered 503), and a
/// connection without a complete request within `idleSeconds` is closed, so a client holding
/// connections open costs the relay nothing but those.
public final class RelayMetricsServer: @unchecked Sendable {
    public static let maxConnections = 16
    public static let idleSeconds = 10.0
    private let cap = ConnectionCap(maxConnections: RelayMetricsServer.maxConnections,
                                    refusal: ConnectionRefuser.serviceUnavailable(contentType: "text/plain", body: "too many connections\n"))
    let hub: RelayHub
    let host: String
    let port: Int
    let group: any EventLoopGroup
    private var channel: (any Channel)?

    public init(hub: RelayHub, host: String, port: Int, group: any EventLoopGroup) {
        self.hub = hub
        self.host = host
        self.port = port
        self.group = group
    }

    /// Binds and serves; returns the port bound (useful with port 0).
    public func start() throws -> Int {
        let hub = self.hub
        let cap = self.cap
        let ch = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                cap.initialize(channel) { MetricsHandler(hub: hub) }
            }
            .bind(host: host, port: port).wait()
        channel = ch
        return ch.localAddress?.port ?? port
    }

    public func stop() {
        try? channel?.close().wait()
        channel = nil
    }
}

final class MetricsHandler: IdleClosingHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let hub: RelayHub
    let idle = IdleDeadline(seconds: RelayMetricsServer.idleSeconds)
    private var head: HTTPRequestHead?

    init(hub: RelayHub) { self.hub = hub }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let h = head else { return }
            idle.begin()
            let (status, body): (HTTPResponseStatus, String)
            if h.uri.split(separator: "?").first != "/metrics" {
                (status, body) = (.notFound, "not found: GET /metrics\n")
            } else if h.method != .GET {
                (status, body) = (.methodNotAllowed, "GET only\n")
            } else {
                (status, body) = (.ok, RelayMetrics.text(hub.statistics(), lagging: hub.lagging(limit: RelayMetrics.laggingLimit)))
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: status == .ok ? "text/plain; version=0.0.4" : "text/plain")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: status, headers: headers))), promise: nil)
            var buf = context.channel.allocator.buffer(capacity: body.utf8.count)
            buf.writeString(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
            head = nil
        }
    }
}
