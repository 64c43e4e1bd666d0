/// Writes a Document back as version-1 JSON: keys sorted and one canonical spelling per value
/// (protocol names where the spec has one, `"N"`/`"N-M"` ports, canonical addresses), so that
/// `Document.parse(json: doc.jsonText())` gives `doc` back. For the CLI and for tests.
extension Document {
    /// Canonical JSON text of the document (compact, keys sorted).
    public func jsonText() -> String {
        var out = "{\"version\":1,\"host\":" + jsonString(host)
        if !guardedPrefixes.isEmpty {
            out += ",\"guarded_prefixes\":[" + guardedPrefixes.map(jsonString).joined(separator: ",") + "]"
        }
        out += ",\"groups\":{"
        out += groups.keys.sorted().map { id in
            let g = groups[id]!
            var o = jsonString(id) + ":{"
            if let d = g.description { o += "\"description\":" + jsonString(d) + "," }
            o += "\"rules\":[" + g.rules.map(ruleJSON).joined(separator: ",") + "]}"
            return o
        }.joined(separator: ",")
        out += "},\"instances\":{"
        out += instances.keys.sorted().map { id in
            let i = instances[id]!
            var o = jsonString(id) + ":{\"host\":" + jsonString(i.host)
            o += ",\"groups\":[" + i.groups.map(jsonString).joined(separator: ",") + "]"
            o += ",\"ips\":[" + i.ips.map { jsonString($0.description) }.joined(separator: ",") + "]"
            if let n = i.interface { o += ",\"interface\":" + jsonString(n) }
            if let m = i.mac { o += ",\"mac\":" + jsonString(m.description) }
            return o + "}"
        }.joined(separator: ",")
        return out + "}}"
    }
}

extension Rule {
    /// Canonical JSON text of one rule, as it appears in a document's `rules` array.
    public func jsonText() -> String { ruleJSON(self) }
}

private func ruleJSON(_ r: Rule) -> String {
    var f: [String] = []
    if let id = r.id { f.append("\"id\":" + jsonString(id)) }
    f.append("\"direction\":\"\(r.direction.rawValue)\"")
    switch r.proto {
    case .any: f.append("\"protocol\":\"any\"")
    case .number(let n):
        // Numbers that have a name in the spec are written by name; others as integers.
        if let name = RuleProtocol.names.first(where: { $0.value == n })?.key { f.append("\"protocol\":\"\(name)\"") } else { f.append("\"protocol\":\(n)") }
    }
    if let p = r.ports { f.append("\"ports\":\"" + (p.lowerBound == p.upperBound ? "\(p.lowerBound)" : "\(p.lowerBound)-\(p.upperBound)") + "\"") }
    if let t = r.icmpType { f.append("\"icmp_type\":\(t)") }
    if let c = r.icmpCode { f.append("\"icmp_code\":\(c)") }
    switch r.remote {
    case .cidr(let p): f.append("\"cidr\":" + jsonString(p.description))
    case .group(let g): f.append("\"group\":" + jsonString(g))
    }
    if let e = r.ethertype { f.append("\"ethertype\":\"\(e.rawValue)\"") }
    return "{" + f.joined(separator: ",") + "}"
}

/// A JSON string literal: quotes, backslashes and control characters escaped. Shared by
/// everything in Rampart that writes JSON by hand (documents, the daemon's API, the store).
public func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where u.value < 0x20:
            let h = String(u.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}
