import ArgumentParser
import Foundation
import RampartCore

/// `rampart-bench rules-json`: a group's rules as the stores keep them (a JSON array in
/// document syntax), parsed and validated (`Rule.parseList`) and written (`Rule.jsonText`).
///
/// Every rules verb reads its group's rules and writes them back before its COMMIT (the
/// controller's serial part, ahead of every notified daemon), and every daemon parses the group's
/// rules again from its read-ahead: a ten-host rules change parses them eleven times.
///
/// Baselines, same run, same text: Foundation's `JSONSerialization` (a generic parse into
/// dictionaries, no validation: what a parse costs without Rampart's checks) and Foundation's
/// `JSONEncoder` with sorted keys (the encoder `RampartJSON` wraps).
struct RulesJSONBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rules-json",
        abstract: "A group's rules JSON: parse and validate, and write, beside Foundation's JSON.")
    @OptionGroup var options: CommonBenchOptions

    func run() throws {
        let report = Report(json: options.json)
        let repeats = options.repeats ?? 20_001
        for count in [2, 20] {
            let rules = Self.rules(count)
            let text = Rule.jsonText(rules)
            // Parsed back to the same rules, or the figure would time something else.
            guard try Rule.parseList(json: text, at: "rules", groupExists: { _ in true }) == rules else {
                throw ValidationError("the rules did not parse back to themselves")
            }
            let parse = try measure(repeats: repeats) { _ = try Rule.parseList(json: text, at: "rules", groupExists: { _ in true }) }
            let bytes = Data(text.utf8)
            let generic = try measure(repeats: repeats) { _ = try JSONSerialization.jsonObject(with: bytes) }
            report.add(Figure(benchmark: "rules JSON: parse and validate \(count) rules", median_ns: median(parse),
                              baseline: "JSONSerialization, no validation", baseline_median_ns: median(generic),
                              extra: ["p99": formatDuration(percentile(parse, 99)), "bytes": "\(text.utf8.count)"]))
            let write = measure(repeats: repeats) { _ = Rule.jsonText(rules) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let foundation = try measure(repeats: repeats) { _ = try encoder.encode(rules) }
            report.add(Figure(benchmark: "rules JSON: write \(count) rules", median_ns: median(write),
                              baseline: "JSONEncoder, sorted keys", baseline_median_ns: median(foundation),
                              extra: ["p99": formatDuration(percentile(write, 99))]))
        }
        report.finish()
    }

    static func prefix(_ text: String) -> IPPrefix {
        guard case .ok(let p) = IPPrefix.parse(text) else { preconditionFailure("not a prefix: \(text)") }
        return p
    }

    /// `count` rules of the shapes a group holds: TCP ports from a prefix, a port range from a
    /// group, ICMP with a type, IPv6 prefixes, egress.
    static func rules(_ count: Int) -> [Rule] {
        (0..<count).map { n in
            switch n % 4 {
            case 0: Rule(id: "r\(n)", proto: .tcp, ports: UInt16(80 + n)...UInt16(80 + n), remote: .cidr(Self.prefix("10.\(n).0.0/16")))
            case 1: Rule(id: "r\(n)", proto: .udp, ports: 5000...5100, remote: .group("web-\(n)"))
            case 2: Rule(id: "r\(n)", proto: .icmp, icmpType: 8, remote: .cidr(Self.prefix("192.168.\(n).0/24")))
            default: Rule(id: "r\(n)", direction: .egress, proto: .tcp, ports: 443...443, remote: .cidr(Self.prefix("2001:db8:\(n)::/48")))
            }
        }
    }
}
