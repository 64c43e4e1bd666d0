import Foundation
import Testing
@testable import RampartCore

/// The committed corpus of the document fuzz target (Fuzz/corpus/document, docs/fuzzing.md).
func fuzzCorpus(_ target: String) throws -> [(String, [UInt8])] {
    let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../Fuzz/corpus/\(target)").standardizedFileURL
    return try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted().map { name in
        (name, Array(try Data(contentsOf: dir.appendingPathComponent(name))))
    }
}

/// What the document fuzz target found, each as a plain test, and its corpus replayed through the
/// same oracle (so that CI keeps every input the fuzzer learnt from, without running it).
@Suite struct FuzzFindingsTests {
    @Test func corpusHoldsTheOracle() throws {
        let corpus = try fuzzCorpus("document")
        #expect(corpus.count >= 5)
        for (name, bytes) in corpus {
            #expect(DocumentOracle.check(bytes) == nil, "\(name)")
        }
    }

    /// inet_pton reads a C string: "10.0.0.1\u0000x" was accepted as 10.0.0.1, in `ips` and `cidr`.
    @Test func addressesWithNULAreRejected() {
        #expect(IPAddress("10.0.0.1\u{0}x") == nil)
        #expect(IPAddress("fd00::1\u{0}") == nil)
        #expect(errors(doc(instances: #""web-1": {"host": "hv1", "interface": "tap1", "ips": ["10.0.0.1\u0000x"], "groups": ["web"]}"#))
            == [#"instances.web-1.ips[0]: "10.0.0.1\u0000x" is not an IPv4 or IPv6 address"#])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "10.0.0.0\u0000/8"}"#))
            == [#"groups.web.rules[1].cidr: "10.0.0.0\u0000/8" is not an IPv4 or IPv6 prefix"#])
        #expect(errors(rule(#"{"protocol": "tcp", "cidr": "fd00::\u0000/8"}"#)).count == 1)
    }

    /// Keys went into error paths raw: a newline in an unknown key forged a line of the error
    /// output, an ESC or CSI (C1 0x9b) a terminal escape. Keys and quoted values escape them now.
    @Test func controlCharactersInKeysAreEscaped() {
        #expect(errors(doc(groups: #""web": {"rules": [], "x\nversion: fine": 1}"#))
            == [#"groups.web."x\u000aversion: fine": unknown key"#])
        #expect(errors(doc(groups: #""web": {"rules": []}, "\u007fk": {"rules": []}"#))
            == [#"groups."\u007fk": "\u007fk" is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        #expect(errors(doc(groups: #""web": {"rules": []}, "\u009b2J": {"rules": []}"#))
            == [#"groups."\u009b2J": "\u009b2J" is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"#])
        // Printable keys are left as they are.
        #expect(errors(doc(groups: #""web": {"rules": [], "déjà vu": 1}"#)) == ["groups.web.déjà vu: unknown key"])
    }

    /// The contract counts lengths in Unicode scalars; `count` (grapheme clusters) let a
    /// description of one letter and 300 combining marks through.
    @Test func descriptionLengthCountsUnicodeScalars() {
        let marks = "e" + String(repeating: "\u{301}", count: 300)
        #expect(marks.count == 1)
        let json = doc(groups: #""web": {"rules": [], "description": "\#(marks)"}"#)
        #expect(errors(json) == ["groups.web.description: 301 characters long; at most 255"])
        let fits = "e" + String(repeating: "\u{301}", count: 254)
        #expect(errors(doc(groups: #""web": {"rules": [], "description": "\#(fits)"}"#)) == [])
        #expect(Document(host: "hv1", groups: ["web": Group(description: marks)]).issues().map(\.description)
            == ["groups.web.description: 301 characters long; at most 255"])
    }
}
