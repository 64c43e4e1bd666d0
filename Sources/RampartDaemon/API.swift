import Foundation
import RampartCore
import RampartStore

/// One HTTP response of the API.
public struct APIResponse: Sendable, Equatable {
    public var status: Int
    public var contentType: String
    public var body: String
    public var headers: [(String, String)] = []

    public init(status: Int, contentType: String = "application/json", body: String, headers: [(String, String)] = []) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
    }

    public static func == (a: Self, b: Self) -> Bool { a.status == b.status && a.body == b.body && a.contentType == b.contentType }

    static func error(_ status: Int, _ message: String, headers: [(String, String)] = []) -> APIResponse {
        APIResponse(status: status, body: "{\"error\":\(jsonString(message))}\n", headers: headers)
    }
}


/// The HTTP/JSON API, independent of the transport (the NIO server feeds it; tests call it).
///
/// ```
/// POST /v1/refresh/members/{group}    refresh_security_group_members
/// POST /v1/refresh/rules/{group}      refresh_security_group_rules
/// POST /v1/refresh/instance/{id}      an instance was added, removed or changed on this host
/// POST /v1/refresh/host               reload this host's whole document (after an import)
/// POST /v1/resync                     read the table back and repair drift now
/// GET  /v1/status                     200 when ready (after the first sync), else 503
/// GET  /metrics                       Prometheus text
/// ```
/// A refresh returns 202 once queued; with `?wait=1` (or a body `{"wait": true}`) it returns 200
/// after the transaction that covers it has committed.
public struct APIRouter: Sendable {
    public let daemon: Daemon
    public static let maxBody = 64 * 1024

    public init(daemon: Daemon) { self.daemon = daemon }

    public func handle(method: String, uri: String, body: [UInt8]) async -> APIResponse {
        await withCheckedContinuation { (c: CheckedContinuation<APIResponse, Never>) in
            handle(method: method, uri: uri, body: body) { c.resume(returning: $0) }
        }
    }

    /// Answers through `reply`, at once or after the commit (`wait`); never blocks on the kernel.
    public func handle(method: String, uri: String, body: [UInt8], reply: @escaping @Sendable (APIResponse) -> Void) {
        if let r = immediate(method: method, uri: uri, body: body, reply: reply) { reply(r) }
    }

    private func immediate(method: String, uri: String, body: [UInt8], reply: @escaping @Sendable (APIResponse) -> Void) -> APIResponse? {
        let (path, query) = splitURI(uri)
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        // parts[0] is "" (leading slash)
        switch (parts.count, parts.dropFirst().first) {
        case (2, "metrics"):
            guard method == "GET" else { return .error(405, "method \(method) not allowed on \(path); use GET", headers: [("Allow", "GET")]) }
            return APIResponse(status: 200, contentType: "text/plain; version=0.0.4", body: daemon.metricsText())
        default: break
        }
        guard parts.count >= 3, parts[1] == "v1" else { return .error(404, "no such endpoint: \(path)") }
        switch parts[2] {
        case "status" where parts.count == 3:
            guard method == "GET" else { return .error(405, "method \(method) not allowed on \(path); use GET", headers: [("Allow", "GET")]) }
            let st = daemon.currentStatus
            return APIResponse(status: st.ready ? 200 : 503, body: st.json + "\n")
        case "resync" where parts.count == 3:
            guard method == "POST" else { return .error(405, "method \(method) not allowed on \(path); use POST", headers: [("Allow", "POST")]) }
            _ = daemon.requestResync { reply(Self.outcomeResponse($0)) }
            return nil
        case "refresh":
            guard method == "POST" else { return .error(405, "method \(method) not allowed on \(path); use POST", headers: [("Allow", "POST")]) }
            var wait = query["wait"].map { $0 == "1" || $0 == "true" } ?? false
            if !body.isEmpty {
                guard let obj = try? JSONSerialization.jsonObject(with: Data(body)), let dict = obj as? [String: Any] else {
                    return .error(400, "malformed JSON body: expected an object such as {\"wait\": true}")
                }
                for key in dict.keys where key != "wait" { return .error(400, "unknown key \(jsonString(key)) in body") }
                if let w = dict["wait"] {
                    guard let b = w as? Bool else {
                        return .error(400, "wait: expected a boolean")
                    }
                    wait = b
                }
            }
            let refresh: Refresh
            switch (parts.count, parts.count > 3 ? parts[3] : "") {
            case (4, "host"): refresh = .host
            case (5, let kind) where ["members", "rules", "instance"].contains(kind):
                let id = parts[4].removingPercentEncoding ?? parts[4]
                if let problem = idProblem(id) { return .error(400, "invalid id \(jsonString(id)): \(problem)") }
                switch kind {
                case "members", "rules":
                    do {
                        if try !daemon.store.groupExists(id) { return .error(404, "unknown group \(id)") }
                    } catch {
                        return .error(500, "store: \(error)")
                    }
                    refresh = kind == "members" ? .members(id) : .rules(id)
                default:
                    refresh = .instance(id)
                }
            default:
                return .error(404, "no such endpoint: \(path)")
            }
            // The waiter is registered with the ticket, so the answer is the outcome of the drain
            // that carried this refresh; a full queue is answered 503 with Retry-After.
            var onDone: (@Sendable (SyncOutcome) -> Void)?
            if wait { onDone = { (o: SyncOutcome) in reply(Self.outcomeResponse(o)) } }
            guard let ticket = daemon.offer(refresh, reply: onDone) else {
                return Self.queueFull
            }
            if !wait { return APIResponse(status: 202, body: "{\"status\":\"queued\",\"ticket\":\(ticket)}\n") }
            return nil
        default:
            return .error(404, "no such endpoint: \(path)")
        }
    }

    static let queueFull = APIResponse.error(503, "too many refreshes queued; retry later", headers: [("Retry-After", "1")])

    private static func outcomeResponse(_ o: SyncOutcome) -> APIResponse {
        switch o {
        case .committed(let g): APIResponse(status: 200, body: "{\"status\":\"committed\",\"generation\":\(g.map(String.init) ?? "null")}\n")
        case .failed(let e): .error(500, e)
        }
    }

    private func idProblem(_ id: String) -> String? {
        let issues = Document(host: "-", groups: [id: Group()]).issues()
        return issues.isEmpty ? nil : issues.map(\.reason).joined(separator: "; ")
    }

    private func splitURI(_ uri: String) -> (String, [String: String]) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
            query[kv[0]] = kv.count > 1 ? kv[1] : ""
        }
        return (String(uri[..<q]), query)
    }
}
