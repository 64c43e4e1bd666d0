import Foundation
import RampartHarness
@testable import RampartNetlink

/// A fresh namespace with a netlink connection into it, for one test.
struct KernelFixture {
    let ns: TestNamespace
    let nl: NFTablesConnection

    init(_ prefix: String = "nl") throws {
        ns = try TestNamespace(prefix: prefix)
        nl = try NFTablesConnection(namespace: .named(ns.name))
    }
}

let T = "rtest"  // table name used by the tests
let ipv4Any: [UInt8] = [0, 0, 0, 0]

func ip4(_ s: String) -> [UInt8] { s.split(separator: ".").map { UInt8($0)! } }

func ip6(_ s: String) -> [UInt8] {
    var a = in6_addr()
    precondition(inet_pton(AF_INET6, s, &a) == 1, "bad IPv6 \(s)")
    return withUnsafeBytes(of: a) { Array($0) }
}

func rule(_ chain: String, _ exprs: [NFTExpr], comment: String? = nil, tag: [UInt8]? = nil) -> NFTRule {
    NFTRule(family: .inet, table: T, chain: chain, expressions: exprs, comment: comment, tag: tag)
}

/// The `rule` objects of `nft -j list ruleset` for one chain, as their `expr` arrays.
func nftRules(_ items: [[String: Any]], chain: String) -> [[String: Any]] {
    items.compactMap { $0["rule"] as? [String: Any] }.filter { $0["chain"] as? String == chain }
}

/// Compact JSON text of a value, for readable comparisons.
func json(_ value: Any) -> String {
    let data = try! JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed])
    return String(decoding: data, as: UTF8.self)
}
