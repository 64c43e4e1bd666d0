import Foundation

/// Rampart's one JSON writer. Everything Rampart writes as JSON (documents, a group's stored
/// rules, the CLI's `--json` outputs, benchmark figures) is an `Encodable` value written here, so
/// there is one spelling: keys sorted, slashes unescaped (`10.0.0.0/8`, not `10.0.0.0\/8`),
/// control characters escaped. Compact for what machines store and exchange, indented for
/// people (`pretty`). Nothing in Rampart builds JSON text by hand.
public enum RampartJSON {
    /// A fresh encoder with Rampart's settings.
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = pretty ? [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted] : [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    /// The JSON text of `value`.
    public static func text(_ value: some Encodable, pretty: Bool = false) throws -> String {
        String(decoding: try encoder(pretty: pretty).encode(value), as: UTF8.self)
    }

    /// The JSON text of a value whose encoding cannot fail (Rampart's own types: strings,
    /// integers and containers of them, no floating point).
    public static func infallibleText(_ value: some Encodable) -> String {
        do { return try text(value) } catch { preconditionFailure("encoding \(type(of: value)) failed: \(error)") }
    }
}

/// A JSON string literal (quotes, backslashes and control characters escaped), written by
/// `RampartJSON`: for quoting a value inside a message.
public func jsonString(_ s: String) -> String { RampartJSON.infallibleText(s) }

/// An object key, written as a string literal.
struct JSONKey: CodingKey, ExpressibleByStringLiteral {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
    init(stringLiteral value: String) { stringValue = value }
}

// The document's JSON spelling (version 1): one canonical form per value — protocol names where
// the spec has one, `"N"`/`"N-M"` ports, canonical addresses — so that
// `Document.parse(json: doc.jsonText())` gives `doc` back. Encoding only: reading goes through
// the validating parser (`Document.parse`), which sees what `Decodable` hides (duplicate keys,
// the exact text of numbers).

extension Document: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: JSONKey.self)
        try c.encode(1, forKey: "version")
        try c.encode(host, forKey: "host")
        if !guardedPrefixes.isEmpty { try c.encode(guardedPrefixes, forKey: "guarded_prefixes") }
        try c.encode(groups, forKey: "groups")
        try c.encode(instances, forKey: "instances")
    }

    /// Canonical JSON text of the document (compact, keys sorted).
    public func jsonText() -> String { RampartJSON.infallibleText(self) }
}

extension Group: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: JSONKey.self)
        try c.encodeIfPresent(description, forKey: "description")
        try c.encode(rules, forKey: "rules")
    }
}

extension Rule: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: JSONKey.self)
        try c.encodeIfPresent(id, forKey: "id")
        try c.encode(direction.rawValue, forKey: "direction")
        switch protocolSpelling {
        case .name(let name): try c.encode(name, forKey: "protocol")
        case .number(let n): try c.encode(n, forKey: "protocol")
        }
        try c.encodeIfPresent(portsText, forKey: "ports")
        try c.encodeIfPresent(icmpType, forKey: "icmp_type")
        try c.encodeIfPresent(icmpCode, forKey: "icmp_code")
        switch remote {
        case .cidr(let p): try c.encode(p.description, forKey: "cidr")
        case .group(let g): try c.encode(g, forKey: "group")
        }
        try c.encodeIfPresent(ethertype?.rawValue, forKey: "ethertype")
    }

    /// How a document writes the protocol: by name where the spec has one (and `any`), else as
    /// an integer. (`encode(to:)` and the direct writer below both spell it so.)
    enum ProtocolSpelling { case name(String), number(UInt8) }

    var protocolSpelling: ProtocolSpelling {
        switch proto {
        case .any: .name("any")
        case .number(let n): RuleProtocol.names.first(where: { $0.value == n }).map { .name($0.key) } ?? .number(n)
        }
    }

    /// The ports as a document writes them: `"N"` or `"N-M"`.
    var portsText: String? { ports.map { $0.lowerBound == $0.upperBound ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" } }

    /// Canonical JSON text of one rule, as it appears in a document's `rules` array.
    public func jsonText() -> String {
        var out: [UInt8] = []
        write(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Canonical JSON text of a rules array (a group's `rules`; what the store keeps).
    ///
    /// Written directly, byte for byte what `encode(to:)` gives through `RampartJSON`'s encoder
    /// (sorted keys, no spaces, slashes unescaped; `rulesJSONWriterMatchesTheEncoder` compares
    /// the two): every rules verb writes its group's rules before its COMMIT, and the encoder
    /// took as long as the parse (`rampart-bench rules-json`).
    public static func jsonText(_ rules: [Rule]) -> String {
        var out: [UInt8] = [UInt8(ascii: "[")]
        out.reserveCapacity(rules.count * 96)
        for (n, r) in rules.enumerated() {
            if n > 0 { out.append(UInt8(ascii: ",")) }
            r.write(to: &out)
        }
        out.append(UInt8(ascii: "]"))
        return String(decoding: out, as: UTF8.self)
    }

    /// The rule as a JSON object, keys in the encoder's sorted order.
    private func write(to out: inout [UInt8]) {
        var first = true
        func key(_ k: StaticString) {
            out.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
            first = false
            out.append(UInt8(ascii: "\""))
            k.withUTF8Buffer { out.append(contentsOf: $0) }
            out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        }
        func number(_ n: UInt8) { out.append(contentsOf: String(n).utf8) }
        if case .cidr(let p) = remote { key("cidr"); writeJSONString(p.description, to: &out) }
        key("direction"); writeJSONString(direction.rawValue, to: &out)
        if let e = ethertype { key("ethertype"); writeJSONString(e.rawValue, to: &out) }
        if case .group(let g) = remote { key("group"); writeJSONString(g, to: &out) }
        if let c = icmpCode { key("icmp_code"); number(c) }
        if let t = icmpType { key("icmp_type"); number(t) }
        if let id { key("id"); writeJSONString(id, to: &out) }
        if let p = portsText { key("ports"); writeJSONString(p, to: &out) }
        key("protocol")
        switch protocolSpelling {
        case .name(let name): writeJSONString(name, to: &out)
        case .number(let n): number(n)
        }
        out.append(UInt8(ascii: "}"))
    }
}

/// A JSON string literal as `RampartJSON`'s encoder writes one: `"` and `\` escaped, control
/// characters as `\b \f \n \r \t` or `\u00xx`, everything else (slashes, non-ASCII) as is.
func writeJSONString(_ s: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
        case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
        case 0x08: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
        case 0x0c: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
        case 0x0a: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
        case 0x0d: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
        case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
        case 0..<0x20:
            let hex = Array("0123456789abcdef".utf8)
            out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 0xf)]])
        default: out.append(b)
        }
    }
    out.append(UInt8(ascii: "\""))
}

extension Instance: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: JSONKey.self)
        try c.encode(host, forKey: "host")
        try c.encode(groups, forKey: "groups")
        try c.encode(ips.map(\.description), forKey: "ips")
        try c.encodeIfPresent(interface, forKey: "interface")
        try c.encodeIfPresent(mac?.description, forKey: "mac")
    }
}
