import Foundation
import RampartDaemon
import RampartStore
import Testing

/// What the API fuzz target found in `APIRoute.parse`, each as a plain test, and its corpus
/// replayed through the same oracle (Fuzz/corpus/api, docs/fuzzing.md).
@Suite struct APIRouteTests {
    func route(_ method: String, _ uri: String, _ body: String = "") -> APIRoute {
        APIRoute.parse(method: method, uri: uri, body: Array(body.utf8))
    }

    @Test func corpusHoldsTheOracle() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Fuzz/corpus/api").standardizedFileURL
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        #expect(names.count >= 10)
        for name in names {
            let bytes = Array(try Data(contentsOf: dir.appendingPathComponent(name)))
            #expect(APIRouteOracle.check(bytes) == nil, "\(name)")
        }
    }

    @Test func routes() {
        #expect(route("GET", "/metrics") == .metrics)
        #expect(route("GET", "/v1/status?x=1") == .status)
        #expect(route("POST", "/v1/resync") == .resync)
        #expect(route("POST", "/v1/refresh/members/web?wait=1") == .refresh(.members("web"), wait: true))
        #expect(route("POST", "/v1/refresh/rules/db", #"{"wait": true}"#) == .refresh(.rules("db"), wait: true))
        #expect(route("POST", "/v1/refresh/instance/a%3Ab") == .refresh(.instance("a:b"), wait: false))
        #expect(route("POST", "/v1/refresh/host?wait=true", #"{"wait": false}"#) == .refresh(.host, wait: false))
        #expect(route("DELETE", "/v1/status") == .reject(status: 405, message: "method DELETE not allowed on /v1/status; use GET", allow: "GET"))
    }

    /// `?=` (a query pair with neither key nor value) split into no parts and indexed kv[0]: one
    /// request crashed rampartd.
    @Test func queryPairWithoutKeyDoesNotCrash() {
        #expect(route("POST", "/v1/refresh/host?=") == .refresh(.host, wait: false))
        #expect(route("POST", "/v1/refresh/host?=&wait=1&=x") == .refresh(.host, wait: true))
        #expect(route("GET", "/v1/status?==") == .status)
    }

    /// Only parts[1...] of the path were looked at: `y/v1/refresh/host` was the refresh endpoint.
    @Test func pathMustBeginWithSlash() {
        #expect(route("POST", "y/v1/refresh/host") == .reject(status: 404, message: "no such endpoint: y/v1/refresh/host", allow: nil))
        #expect(route("GET", "x/metrics") == .reject(status: 404, message: "no such endpoint: x/metrics", allow: nil))
        #expect(route("GET", "v1/status") == .reject(status: 404, message: "no such endpoint: v1/status", allow: nil))
    }

    /// JSONSerialization gives 1 and 0 as NSNumbers that `as? Bool` accepts: `{"wait": 1}` waited.
    @Test func waitMustBeABoolean() {
        let notBool = APIRoute.reject(status: 400, message: "wait: expected a boolean", allow: nil)
        #expect(route("POST", "/v1/refresh/host", #"{"wait": 1}"#) == notBool)
        #expect(route("POST", "/v1/refresh/host", #"{"wait": 0}"#) == notBool)
        #expect(route("POST", "/v1/refresh/host", #"{"wait": "true"}"#) == notBool)
        #expect(route("POST", "/v1/refresh/host", #"{"wait": null}"#) == notBool)
        #expect(route("POST", "/v1/refresh/host", #"{"wait": true}"#) == .refresh(.host, wait: true))
    }

    /// The unknown key named was the dictionary's first, which differs from one parse to the next.
    @Test func unknownKeyIsNamedDeterministically() {
        for _ in 0..<20 {
            #expect(route("POST", "/v1/refresh/host", #"{"x": 0, "Bait": 1, "wait": true, "b": 2}"#)
                == .reject(status: 400, message: #"unknown key "Bait" in body"#, allow: nil))
        }
    }
}
