import Foundation
import RampartCore
import RampartStore

/// What an API request asks for, decided from the request alone (method, URI, body), without a
/// daemon or a store: the pure half of `APIRouter`. It is the API fuzz target's entry point
/// (`scripts/fuzz`, docs/fuzzing.md), so it imports nothing but the core and `Refresh`.
public enum APIRoute: Hashable, Sendable {
    /// `GET /metrics`
    case metrics
    /// `GET /v1/status`
    case status
    /// `POST /v1/resync`
    case resync
    /// `POST /v1/refresh/...`; for `members` and `rules` the store still has to know the group.
    case refresh(Refresh, wait: Bool)
    /// Refused before it reaches the daemon: the status, the message, and the `Allow` header of a 405.
    case reject(status: Int, message: String, allow: String?)

    /// The route of one request. Total: every input gives a route or a rejection.
    public static func parse(method: String, uri: String, body: [UInt8]) -> APIRoute {
        let (path, query) = splitURI(uri)
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let notFound = APIRoute.reject(status: 404, message: "no such endpoint: \(path)", allow: nil)
        // Every endpoint's path begins with "/": parts[0] is "" (`x/v1/status` is no endpoint).
        guard parts.first == "" else { return notFound }
        func only(_ m: String) -> APIRoute? {
            method == m ? nil : .reject(status: 405, message: "method \(method) not allowed on \(path); use \(m)", allow: m)
        }
        if parts.count == 2, parts[1] == "metrics" { return only("GET") ?? .metrics }
        guard parts.count >= 3, parts[1] == "v1" else { return notFound }
        switch parts[2] {
        case "status" where parts.count == 3:
            return only("GET") ?? .status
        case "resync" where parts.count == 3:
            return only("POST") ?? .resync
        case "refresh":
            if let r = only("POST") { return r }
            var wait = query["wait"].map { $0 == "1" || $0 == "true" } ?? false
            if !body.isEmpty {
                guard let obj = try? JSONSerialization.jsonObject(with: Data(body)), let dict = obj as? [String: Any] else {
                    return .reject(status: 400, message: "malformed JSON body: expected an object such as {\"wait\": true}", allow: nil)
                }
                // The smallest, so that the answer does not depend on the dictionary's order.
                if let key = dict.keys.filter({ $0 != "wait" }).min() {
                    return .reject(status: 400, message: "unknown key \(jsonString(key)) in body", allow: nil)
                }
                if dict["wait"] != nil {
                    // JSONSerialization gives 1 and 0 as NSNumbers that `as? Bool` takes for booleans;
                    // the decoder takes only true and false.
                    guard let b = (try? JSONDecoder().decode(WaitBody.self, from: Data(body)))?.wait else {
                        return .reject(status: 400, message: "wait: expected a boolean", allow: nil)
                    }
                    wait = b
                }
            }
            switch (parts.count, parts.count > 3 ? parts[3] : "") {
            case (4, "host"):
                return .refresh(.host, wait: wait)
            case (5, let kind) where ["members", "rules", "instance"].contains(kind):
                let id = parts[4].removingPercentEncoding ?? parts[4]
                if let problem = idProblem(id) { return .reject(status: 400, message: "invalid id \(jsonString(id)): \(problem)", allow: nil) }
                switch kind {
                case "members": return .refresh(.members(id), wait: wait)
                case "rules": return .refresh(.rules(id), wait: wait)
                default: return .refresh(.instance(id), wait: wait)
                }
            default:
                return notFound
            }
        default:
            return notFound
        }
    }

    private struct WaitBody: Decodable { var wait: Bool? }

    private static func idProblem(_ id: String) -> String? {
        let issues = Validate.id(id, at: "id")
        return issues.isEmpty ? nil : issues.map(\.reason).joined(separator: "; ")
    }

    private static func splitURI(_ uri: String) -> (String, [String: String]) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            // Empty sides kept: `?=` is the key "" (omitting them left no kv[0] and crashed).
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            query[kv[0]] = kv.count > 1 ? kv[1] : ""
        }
        return (String(uri[..<q]), query)
    }
}
