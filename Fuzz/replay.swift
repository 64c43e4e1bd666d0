// Replays corpus directories through a target's oracle, for `scripts/fuzz --coverage` (built with
// -profile-generate, without libFuzzer). FUZZ_DOCUMENT or FUZZ_API picks the oracle.
import Foundation

@main enum Replay {
    static func main() throws {
        var files = 0, broken = 0
        for dir in CommandLine.arguments.dropFirst() {
            for name in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() {
                let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: dir).appendingPathComponent(name)))
                files += 1
                #if FUZZ_DOCUMENT
                let problem = DocumentOracle.check(bytes)
                #else
                let problem = APIRouteOracle.check(bytes)
                #endif
                if let problem { broken += 1; print("\(dir)/\(name): \(problem)") }
            }
        }
        print("replayed \(files) inputs, \(broken) broken")
        if broken > 0 { exit(1) }
    }
}
