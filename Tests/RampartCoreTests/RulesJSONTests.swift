import Foundation
import PropertyBased
import Testing
@testable import RampartCore

/// A group's rules as the stores keep them: the direct writer (`Rule.jsonText`), the parse's
/// fast paths (strings without escapes, ports over bytes), and their errors.
@Suite struct RulesJSONTests {
    /// Ids are free text: every character class the encoder treats apart.
    static let oddIDs = ["", "plain", "with \"quotes\"", "back\\slash", "a/b", "tab\there", "nl\nx", "\u{0}\u{1}\u{8}\u{c}\u{1f}",
                         "del\u{7f}", "é ü ✓ 𝄞", "\u{2028}\u{2029}", "\u{9b}csi", "{\"json\":[1]}"]

    @Test func rulesJSONWriterMatchesTheEncoder() async {
        await propertyCheck(count: 300, input: Gen.uint64(in: 0...UInt64.max)) { (seed: UInt64) in
            var gen = DocGen(seed: seed)
            var rules = (0..<gen.int(0...6)).map { _ in gen.rule(groups: ["web", "db-1", "g/x"]) }
            for k in rules.indices where gen.chance(0.5) { rules[k].id = gen.pick(Self.oddIDs) }
            if gen.chance(0.3), !rules.isEmpty { rules[0].proto = .number(UInt8(gen.int(1...255))) }
            #expect(Rule.jsonText(rules) == RampartJSON.infallibleText(rules), "seed \(seed)")
            for r in rules { #expect(r.jsonText() == RampartJSON.infallibleText(r), "seed \(seed)") }
        }
    }

    @Test func writtenRulesParseBack() throws {
        var gen = DocGen(seed: 7)
        for _ in 0..<200 {
            var r = gen.rule(groups: ["web"])
            r.id = gen.pick(Self.oddIDs)
            #expect(try Rule.parseList(json: Rule.jsonText([r]), at: "rules", groupExists: { $0 == "web" }) == [r])
        }
    }

    @Test func portsParseOverBytes() {
        func ports(_ s: String) -> String {
            switch Validate.parsePorts(s, at: "p") {
            case .success(let r): "\(r.lowerBound)-\(r.upperBound)"
            case .failure(let i): i.reason
            }
        }
        #expect(ports("80") == "80-80")
        #expect(ports("1-65535") == "1-65535")
        #expect(ports("0080") == "80-80")
        #expect(ports("0000000443") == "443-443")  // ten digits: allowed, as before
        for bad in ["", "-", "-80", "80-", "80--90", "80-90-100", "+80", " 80", "80 ", "8O", "٨٠", "８０", "80\u{0}", "1.5", "00000000443"] {
            #expect(ports(bad) == "\(quoted(bad)) is not \"N\" or \"N-M\"", "\(bad.debugDescription)")
        }
        #expect(ports("0") == "0 is out of range 1-65535")
        #expect(ports("65536") == "65536 is out of range 1-65535")
        #expect(ports("9999999999") == "9999999999 is out of range 1-65535")
        #expect(ports("90-80") == "\"90-80\": 90 is greater than 80")
    }

    @Test func prefixesParseOverBytes() {
        func prefix(_ s: String) -> String {
            switch IPPrefix.parse(s) {
            case .ok(let p): "\(p)"
            case .invalid(let why): why
            }
        }
        #expect(prefix("10.0.0.0/8") == "10.0.0.0/8")
        #expect(prefix("10.0.0.1") == "10.0.0.1/32")
        #expect(prefix("0.0.0.0/0") == "0.0.0.0/0")
        #expect(prefix("2001:db8::/32") == "2001:db8::/32")
        #expect(prefix("::/0") == "::/0")
        for bad in ["10.0.0.0/", "10.0.0.0/08", "10.0.0.0/8/9", "10.0.0.0/+8", "10.0.0.0/8 ", "10.0.0.0/١", "10.0.0.0/1234"] {
            #expect(prefix(bad) == "\(quoted(bad)) has an invalid prefix length", "\(bad.debugDescription)")
        }
        for bad in ["", "/8", "10.0.0/8", "10.0.0.0.0/8", "x/8", "10.0.0.0\u{0}/8"] {
            #expect(prefix(bad) == "\(quoted(bad)) is not an IPv4 or IPv6 prefix", "\(bad.debugDescription)")
        }
        #expect(prefix("10.0.0.0/33") == "\"10.0.0.0/33\": prefix length 33 is out of range 0-32")
        #expect(prefix("::/129") == "\"::/129\": prefix length 129 is out of range 0-128")
        #expect(prefix("10.0.0.1/8") == "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8")
    }

    /// The error of a field names its path, built only when there is an error.
    @Test func errorsNameTheirPaths() {
        let json = #"[{"protocol":"tcp","ports":"80","cidr":"10.0.0.0/8"},{"protocol":"tcp","ports":"x","cidr":"10.0.0.0/33","bogus":1,"direction":"up"}]"#
        #expect(throws: DocumentError.self) { try Rule.parseList(json: json, at: "groups.web.rules", groupExists: { _ in true }) }
        do {
            _ = try Rule.parseList(json: json, at: "groups.web.rules", groupExists: { _ in true })
        } catch {
            let paths = error.issues.map(\.path)
            #expect(paths.contains("groups.web.rules[1].ports"))
            #expect(paths.contains("groups.web.rules[1].cidr"))
            #expect(paths.contains("groups.web.rules[1].bogus"))
            #expect(paths.contains("groups.web.rules[1].direction"))
            #expect(!paths.contains { $0.hasPrefix("groups.web.rules[0]") })
        }
    }

    /// Strings with escapes take the copying path, those without the direct one; both reject
    /// bad UTF-8 and raw control characters at the same offsets.
    @Test func stringsParseWithAndWithoutEscapes() throws {
        #expect(try Rule.parseList(json: #"[{"id":"a\"b\\c\/d\u00e9\ud834\udd1e","protocol":"any","group":"web"}]"#, at: "r",
                                   groupExists: { _ in true }).first?.id == "a\"b\\c/dé𝄞")
        #expect(try Rule.parseList(json: #"[{"id":"é✓","protocol":"any","group":"web"}]"#, at: "r", groupExists: { _ in true }).first?.id == "é✓")
        func syntax(_ bytes: [UInt8]) -> String {
            do { _ = try JSONParser.parse(bytes); return "ok" } catch { return "\(error.offset): \(error.reason)" }
        }
        #expect(syntax(Array("\"ab".utf8)) == "3: unterminated string")
        #expect(syntax([0x22, 0x61, 0xff, 0x22]) == "4: invalid UTF-8 in string")
        #expect(syntax([0x22, 0x5c, 0x6e, 0xff, 0x22]) == "5: invalid UTF-8 in string")
        #expect(syntax([0x22, 0x61, 0x0a, 0x22]) == "2: control character in string")
        #expect(syntax([0x22, 0xed, 0xa0, 0x80, 0x22]) == "5: invalid UTF-8 in string")  // an encoded surrogate
    }
}
