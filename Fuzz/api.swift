// libFuzzer entry point of the API target: APIRoute.parse and its oracle
// (Tests/RampartDaemonTests/APIRouteOracle.swift). Built by scripts/fuzz, not by SwiftPM.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAPI(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard size <= APIRouteOracle.maxInput else { return -1 }
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    if let broken = APIRouteOracle.check(bytes) { fatalError("API oracle: \(broken)") }
    return 0
}
