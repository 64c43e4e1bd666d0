import RampartCore
@testable import RampartStore
import Testing

/// An instance row as both stores return it (`SQLStore.record`): what every members refresh and
/// document read parses. Its lists are split over UTF-8 bytes (`commaFields`), and its error
/// texts are built only for a row that fails.
@Suite("Instance rows parse as before, and fail with their path")
struct RecordParseTests {
    @Test func commaFieldsSplitsAsSplitDoesOnStoreText() {
        for text in ["", ",", ",,", "a", "a,b", "a,,b", ",a", "a,", "10.0.0.1,fd00::1", "web,db-1,x.y:z", "ä,ö", "日本,語"] {
            #expect(SQLStore.commaFields(text) == text.split(separator: ",", omittingEmptySubsequences: false), "\(text.debugDescription)")
        }
        // Unlike `split`, a comma is a separator even where a combining mark follows it.
        #expect(SQLStore.commaFields("a,\u{301}b").map(String.init) == ["a", "\u{301}b"])
    }

    @Test func aRowBecomesItsRecord() throws {
        let (id, inst) = try SQLStore.record(["web-1", "hv1", "10.0.0.1,fd00::1", "tap1", "02:00:00:00:01:11", "web,db"])
        #expect(id == "web-1")
        #expect(inst == Instance(host: "hv1", groups: ["web", "db"], ips: [IPAddress("10.0.0.1")!, IPAddress("fd00::1")!],
                                 interface: "tap1", mac: MACAddress("02:00:00:00:01:11")))
        let bare = try SQLStore.record(["i", "hv2", "10.0.0.2", nil, nil, nil]).instance
        #expect(bare == Instance(host: "hv2", groups: [], ips: [IPAddress("10.0.0.2")!], interface: nil, mac: nil))
    }

    @Test func aBadRowNamesWhatIsWrong() {
        func failure(_ row: [String?]) -> String {
            do { _ = try SQLStore.record(row); return "accepted" } catch { return "\(error)" }
        }
        #expect(failure([nil, "hv1", "10.0.0.1", nil, nil, nil]).contains("an instance row has no id"))
        #expect(failure(["i", nil, "10.0.0.1", nil, nil, nil]).contains("store: instances.i.host: missing"))
        #expect(failure(["i", "hv1", nil, nil, nil, nil]).contains("store: instances.i.ips: missing"))
        #expect(failure(["i", "hv1", "10.0.0.1,,10.0.0.2", nil, nil, nil]).contains(#"store: instances.i.ips: "" is not an IP address"#))
        #expect(failure(["i", "hv1", "10.0.0.1,nope", nil, nil, nil]).contains(#"store: instances.i.ips: "nope" is not an IP address"#))
        #expect(failure(["i", "hv1", "10.0.0.1", nil, "02:00:00:00:01", nil]).contains(#"store: instances.i.mac: "02:00:00:00:01" is not a MAC address"#))
    }
}
