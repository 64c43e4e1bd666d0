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
        json(status, APIBody.Failure(error: message), headers: headers)
    }

    /// A JSON body written by the project's one JSON writer (`RampartJSON`), newline-terminated.
    static func json(_ status: Int, _ value: some Encodable, headers: [(String, String)] = []) -> APIResponse {
        APIResponse(status: status, body: RampartJSON.infallibleText(value) + "\n", headers: headers)
    }
}

/// The API's bodies, as values.
enum APIBody {
    struct Failure: Encodable { var error: String }
    struct Queued: Encodable { var status = "queued"; var ticket: UInt64 }
    struct Committed: Encodable {
        var status = "committed"
        var generation: UInt32?
        // `generation` is written as null when there is none, not left out.
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(status, forKey: .status)
            try c.encode(generation, forKey: .generation)
        }
        enum CodingKeys: String, CodingKey { case status, generation }
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
        switch APIRoute.parse(method: method, uri: uri, body: body) {
        case .reject(let status, let message, let allow):
            return .error(status, message, headers: allow.map { [("Allow", $0)] } ?? [])
        case .metrics:
            return APIResponse(status: 200, contentType: "text/plain; version=0.0.4", body: daemon.metricsText())
        case .status:
            let st = daemon.currentStatus
            return APIResponse(status: st.ready ? 200 : 503, body: st.json + "\n")
        case .resync:
            _ = daemon.requestResync { reply(Self.outcomeResponse($0)) }
            return nil
        case .refresh(let refresh, let wait):
            switch refresh {
            case .members(let id), .rules(let id):
                // The store may be a network away (PostgreSQL) and its calls block: asked off the
                // event loop, which must never wait.
                DispatchQueue.global().async { [self] in
                    do throws(StoreError) {
                        if try !daemon.store.groupExists(id) { return reply(.error(404, "unknown group \(id)")) }
                    } catch {
                        return reply(.error(error.kind == .unavailable ? 503 : 500, "store: \(error)"))
                    }
                    if let r = enqueue(refresh, wait: wait, reply: reply) { reply(r) }
                }
                return nil
            case .instance, .host:
                return enqueue(refresh, wait: wait, reply: reply)
            }
        }
    }

    /// Queues a refresh; the answer now (202, 503), or nil when `reply` gets it after the commit.
    private func enqueue(_ refresh: Refresh, wait: Bool, reply: @escaping @Sendable (APIResponse) -> Void) -> APIResponse? {
        // The waiter is registered with the ticket, so the answer is the outcome of the drain
        // that carried this refresh; a full queue is answered 503 with Retry-After.
        var onDone: (@Sendable (SyncOutcome) -> Void)?
        if wait { onDone = { (o: SyncOutcome) in reply(Self.outcomeResponse(o)) } }
        guard let ticket = daemon.offer(refresh, reply: onDone) else {
            return Self.queueFull
        }
        if !wait { return .json(202, APIBody.Queued(ticket: ticket)) }
        return nil
    }

    static let queueFull = APIResponse.error(503, "too many refreshes queued; retry later", headers: [("Retry-After", "1")])

    private static func outcomeResponse(_ o: SyncOutcome) -> APIResponse {
        switch o {
        case .committed(let g): .json(200, APIBody.Committed(generation: g))
        case .failed(let e): .error(500, e)
        }
    }
}
