// libFuzzer entry point of the document target: Document.parse and its oracle
// (Tests/RampartCoreTests/DocumentOracle.swift). Built by scripts/fuzz, not by SwiftPM.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDocument(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard size <= DocumentOracle.maxInput else { return -1 }
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    if let broken = DocumentOracle.check(bytes) { fatalError("document oracle: \(broken)") }
    return 0
}
