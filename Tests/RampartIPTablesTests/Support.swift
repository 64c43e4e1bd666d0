import Foundation
import RampartCore

/// The example document of the spec (docs/examples/two-tier.json).
let exampleDocument: Document = try! Document.parse(json: Data(contentsOf: URL(fileURLWithPath: examplePath)))

/// Its path.
let examplePath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../docs/examples/two-tier.json").standardizedFileURL.path

/// The `rampart` executable built beside the test bundle.
let rampartExecutable: String = {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let candidate = dir.appendingPathComponent("rampart").path
    if FileManager.default.fileExists(atPath: candidate) { return candidate }
    return dir.deletingLastPathComponent().appendingPathComponent("rampart").path
}()
