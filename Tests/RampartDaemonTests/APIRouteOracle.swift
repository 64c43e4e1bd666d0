import Foundation
import RampartDaemon
import RampartStore

/// What must hold for any request given to `APIRoute.parse`, beyond "it does not crash". Shared
/// by the API fuzz target (`Fuzz/api.swift`, built by `scripts/fuzz` with this file) and by
/// `FuzzCorpusTests`, which replays the committed corpus through it. No Testing import here.
///
/// An input is `METHOD URI\nBODY`: the method up to the first space, the URI up to the first
/// newline, the body after it (any bytes).
enum APIRouteOracle {
    /// The server refuses bodies over `APIRouter.maxBody` (64 KiB) before routing; the fuzz
    /// build has no `APIRouter`, hence the literal.
    static let maxInput = 64 * 1024 + 4096

    static func split(_ bytes: [UInt8]) -> (method: String, uri: String, body: [UInt8]) {
        let sp = bytes.firstIndex(of: UInt8(ascii: " ")) ?? bytes.endIndex
        let rest = bytes[min(sp + 1, bytes.endIndex)...]
        let nl = rest.firstIndex(of: UInt8(ascii: "\n")) ?? rest.endIndex
        return (String(decoding: bytes[..<sp], as: UTF8.self), String(decoding: rest[..<nl], as: UTF8.self),
                Array(rest[min(nl + 1, rest.endIndex)...]))
    }

    /// nil when every property holds, else what broke.
    static func check(_ bytes: [UInt8]) -> String? {
        guard bytes.count <= maxInput else { return nil }
        let (method, uri, body) = split(bytes)
        let route = APIRoute.parse(method: method, uri: uri, body: body)
        if APIRoute.parse(method: method, uri: uri, body: body) != route { return "not deterministic" }
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? uri
        switch route {
        case .metrics:
            if method != "GET" || path != "/metrics" { return "\(method) \(uri) routed to metrics" }
        case .status:
            if method != "GET" || path != "/v1/status" { return "\(method) \(uri) routed to status" }
        case .resync:
            if method != "POST" || path != "/v1/resync" { return "\(method) \(uri) routed to resync" }
        case .refresh(let r, let wait):
            if method != "POST" || !path.hasPrefix("/v1/refresh/") { return "\(method) \(uri) routed to \(r)" }
            // The refresh's own path (what the controller sends) routes to it, and `wait` is the
            // query's or the body's alone.
            if case .instance(let id) = r, id.isEmpty { return "empty instance id" }
            if APIRoute.parse(method: "POST", uri: r.path, body: []) != .refresh(r, wait: false) { return "\(r.path) does not route to \(r)" }
            if APIRoute.parse(method: "POST", uri: r.path + "?wait=1", body: []) != .refresh(r, wait: true) { return "\(r.path)?wait=1 does not wait" }
            if !body.isEmpty, let problem = bodyProblem(body) { return "body accepted although \(problem)" }
            _ = wait
        case .reject(let status, let message, let allow):
            if ![400, 404, 405].contains(status) { return "status \(status)" }
            if message.isEmpty { return "rejected without a message" }
            if (status == 405) != (allow != nil) { return "Allow header \(allow ?? "nil") with status \(status)" }
        }
        return nil
    }

    /// The body of a refresh is a JSON object with at most the key `wait`, a boolean.
    static func bodyProblem(_ body: [UInt8]) -> String? {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(body)), let dict = obj as? [String: Any] else {
            return "it is not a JSON object"
        }
        if dict.keys.contains(where: { $0 != "wait" }) { return "it has keys \(dict.keys.sorted())" }
        // Only the literals true and false, whatever JSONSerialization makes of them.
        if dict["wait"] != nil {
            // On bytes: as Characters, "\r\n" is one and equals neither "\r" nor "\n".
            guard let colon = body.firstIndex(of: UInt8(ascii: ":")) else { return "wait has no value" }
            let value = body[(colon + 1)...].drop { [0x20, 0x09, 0x0d, 0x0a].contains($0) }
            if !value.starts(with: Array("true".utf8)) && !value.starts(with: Array("false".utf8)) {
                return "wait is \(String(decoding: value.prefix(20), as: UTF8.self))"
            }
        }
        return nil
    }
}
