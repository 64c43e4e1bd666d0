import Foundation
import NIOPosix
import RampartHarness
import RampartRelay
import Testing

/// `rampart-relay --metrics`: the relay's counters for Prometheus, and the hosts that lag.
@Suite("Relay metrics (real PostgreSQL, in-process relay)", .serialized, .tags(.kernel), .rootOnly)
struct RelayMetricsTests {
    /// GET /metrics over HTTP: the rows read and sent, the subscribers, and a lag line for the
    /// one host whose subscriber never acknowledges (and none for the host that does).
    @Test func metricsCountRowsAndNameOnlyTheLaggingHost() throws {
        let f = try RelayFixture("relay_metrics")
        let relay = try f.relay()
        let metrics = RelayMetricsServer(hub: relay.hub, host: "127.0.0.1", port: 0, group: relay.group)
        let port = try metrics.start()
        defer { metrics.stop() }

        // hv2: a raw subscriber that reads and never acks; hv1: a session that acks as it reads.
        let silent = try LineClient(port: relay.port)
        silent.send(#"{"op":"hello","version":1,"host":"hv2","token":"\#(f.tokens.tokens["hv2"]!)"}"#)
        #expect(silent.receive()?.op == .welcome)
        silent.send(#"{"op":"subscribe","host":"hv2","after":0}"#)
        let reader = try SessionReader(f.session("hv1", relays: [relay]))
        for i in 0..<5 { try f.verb("g2", port: 4000 + i) }  // hv2's rows
        for i in 0..<3 { try f.verb("g1", port: 5000 + i) }  // hv1's rows
        let hv1 = try f.truth("hv1").count, hv2 = try f.truth("hv2").count
        #expect(try reader.read(until: { $0.rows.count >= hv1 }))
        var got = 0
        while got < hv2, let m = silent.receive() { got += m.entries?.count ?? 0 }
        #expect(got == hv2)

        // The lag line names hv2 with its unacknowledged rows; hv1 (acked) is not listed.
        var text = ""
        #expect(eventually(5) {
            text = (try? Self.get(port: port, path: "/metrics")) ?? ""
            return text.contains("rampart_relay_host_lag_rows{host=\"hv2\"} \(hv2)\n") && !text.contains("host=\"hv1\"")
        }, "\(text)")
        #expect(text.hasPrefix("HTTP/1.1 200 OK"))
        #expect(text.contains("rampart_relay_subscribers 2\n"))
        #expect(text.contains("rampart_relay_connected 1\n"))
        #expect(text.contains("# TYPE rampart_relay_rows_sent_total counter\n"))
        let sent = Self.value(text, "rampart_relay_rows_sent_total")
        #expect(sent >= hv1 + hv2, "\(text)")
        #expect(Self.value(text, "rampart_relay_rows_read_total") >= hv1 + hv2)
        #expect(Self.value(text, "rampart_relay_subscribers_behind") == 1)
        // Only /metrics, only GET.
        #expect(try Self.get(port: port, path: "/").hasPrefix("HTTP/1.1 404"))
        // Clients holding connections open without a word fill the cap; the next is refused at
        // once, and the scraper is served again when they go.
        var silent16: [LoopbackLineClient] = []
        for _ in 0..<RelayMetricsServer.maxConnections { silent16.append(try LoopbackLineClient(port: port)) }
        #expect(eventually(5) { (try? Self.get(port: port, path: "/metrics"))?.hasPrefix("HTTP/1.1 503") == true })
        silent16.removeAll()
        #expect(eventually(5) { (try? Self.get(port: port, path: "/metrics"))?.hasPrefix("HTTP/1.1 200") == true })
    }

    /// The whole answer (status line, headers, body) to `GET path`.
    static func get(port: Int, path: String) throws -> String {
        let c = try LoopbackLineClient(port: port)
        c.send("GET \(path) HTTP/1.1\r\nHost: relay\r\n\r")
        var lines: [String] = []
        while let line = c.receiveLine() { lines.append(String(decoding: line, as: UTF8.self)) }
        return lines.joined(separator: "\n").replacingOccurrences(of: "\r", with: "") + "\n"
    }

    /// The value of an unlabelled sample.
    static func value(_ text: String, _ name: String) -> Int {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Int(line.split(separator: " ").last ?? "") ?? -1
        }
        return -1
    }
}
