import Foundation
import PropertyBased
import Testing
@testable import RampartCore

@Suite struct JSONPropertyTests {
    @Test func writtenDocumentsParseBackEqual() async {
        await propertyCheck(count: 200, input: Gen.uint64(in: 0...UInt64.max)) { (seed: UInt64) in recording(seed) { () throws in
            var gen = DocGen(seed: seed)
            var d = gen.document()
            if let g = d.groups.keys.sorted().first {
                d.groups[g]!.description = "free \"text\"\n\u{1}é"
                d.groups[g]!.rules.append(Rule(id: "odd \\ id", proto: .number(47), remote: .group(g)))
            }
            #expect(try Document.parse(json: d.jsonText()) == d, "seed \(seed)")
        } }
    }

    @Test func twoTierRoundTrips() throws {
        let d = try twoTier()
        #expect(try Document.parse(json: d.jsonText()) == d)
    }

    /// Damaged documents never crash the parser: they are accepted (and then valid) or rejected
    /// with at least one issue.
    @Test func damagedDocumentsAreRejectedCleanly() async throws {
        let base = Array(try twoTier().jsonText().utf8)
        let junk = Array("{}[]\",:0-9.e tru\\u00\u{1}é/".utf8)
        await propertyCheck(count: 400, input: Gen.uint64(in: 0...UInt64.max)) { (seed: UInt64) in
            var rng = SeededRNG(seed: seed)
            var bytes = base
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let k = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes.remove(at: k)
                case 1: bytes.insert(junk.randomElement(using: &rng)!, at: k)
                default: bytes[k] = junk.randomElement(using: &rng)!
                }
                if bytes.isEmpty { bytes = [0x7b] }
            }
            do {
                let d = try Document.parse(json: Data(bytes))
                #expect(d.issues() == [], "seed \(seed)")
            } catch let e as DocumentError {
                #expect(!e.issues.isEmpty)
            } catch {
                Issue.record("seed \(seed): unexpected \(error)")
            }
        }
    }
}
