import Foundation
@testable import RampartCore

/// What must hold for any input to `Document.parse`, beyond "it does not crash". Shared by the
/// document fuzz target (`Fuzz/document.swift`, built by `scripts/fuzz` with this file) and by
/// `FuzzCorpusTests`, which replays the committed corpus through it. No Testing import here: the
/// fuzz build compiles this file without it.
enum DocumentOracle {
    /// Larger inputs are not looked at (the fuzzer's `-max_len` keeps below it anyway).
    static let maxInput = 64 * 1024

    /// nil when every property holds, else what broke.
    static func check(_ bytes: [UInt8]) -> String? {
        guard bytes.count <= maxInput else { return nil }
        let doc: Document
        do {
            doc = try Document.parse(json: Data(bytes))
        } catch {
            // A rejection says why, with at least one issue, each on one line: whatever the
            // document's keys and strings hold, no control character reaches the operator's
            // terminal or a log (a newline could forge a line, an escape sequence rewrite one).
            if error.issues.isEmpty { return "rejected without an issue" }
            for issue in error.issues where issue.description.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7f...0x9f).contains($0.value) }) {
                return "an issue with a control character: \(quoted(issue.description))"
            }
            return nil
        }
        // Both validators agree: the typed rules (what the events and a controller use) accept it.
        let typed = doc.issues()
        if !typed.isEmpty { return "accepted by the parser but not by Document.issues(): \(typed)" }
        // The spec's lexical rules, checked on the JSON itself, independently of the parser's own.
        if let problem = lexicalProblem(bytes) { return "accepted although \(problem)" }
        // Canonical JSON round-trips to an equal document and is a fixed point.
        let text = doc.jsonText()
        let again: Document
        do {
            again = try Document.parse(json: text)
        } catch {
            return "its canonical JSON is rejected: \(error) in \(text)"
        }
        if again != doc { return "its canonical JSON parses to a different document: \(text)" }
        if again.jsonText() != text { return "canonical JSON is not a fixed point: \(text) then \(again.jsonText())" }
        // Whatever validates compiles.
        _ = Compiler.compile(doc)
        return nil
    }


    /// The contract's rules on the spelling of values, applied to the raw JSON of an accepted
    /// document: addresses and prefixes of hex digits, dots, colons and one slash; lengths in
    /// Unicode scalars.
    static func lexicalProblem(_ bytes: [UInt8]) -> String? {
        guard case .object(let top)? = try? JSONParser.parse(bytes) else { return "it is not a JSON object" }
        let addressChars = Set("0123456789abcdefABCDEF:.".unicodeScalars)
        func isAddress(_ s: String) -> Bool { !s.isEmpty && s.unicodeScalars.allSatisfy(addressChars.contains) }
        for case ("groups", .object(let groups)) in top {
            for case (let gid, .object(let g)) in groups {
                for case ("description", .string(let d)) in g where d.unicodeScalars.count > 255 {
                    return "groups.\(gid).description has \(d.unicodeScalars.count) Unicode scalars"
                }
                for case ("rules", .array(let rules)) in g {
                    for case .object(let r) in rules {
                        for case ("cidr", .string(let c)) in r {
                            let parts = c.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
                            if !isAddress(String(parts[0])) || (parts.count == 2 && !parts[1].allSatisfy({ $0.isASCII && $0.isNumber })) {
                                return "groups.\(gid) has the cidr \(quoted(c))"
                            }
                        }
                    }
                }
            }
        }
        for case ("instances", .object(let instances)) in top {
            for case (let iid, .object(let inst)) in instances {
                for case ("ips", .array(let ips)) in inst {
                    for case .string(let a) in ips where !isAddress(a) {
                        return "instances.\(iid) has the address \(quoted(a))"
                    }
                }
            }
        }
        return nil
    }
}
