// swift-tools-version:5.9
// The MoeEdge Swift package: the generated Swift bindings and the MoeEdgeSession
// facade (Sources/MoeEdge) over the Rust library, shipped as an XCFramework
// binary target. Run ./build-xcframework.sh on a Mac first: it writes
// MoeEdgeFFI.xcframework and Sources/MoeEdge/MoeEdge.swift.
import PackageDescription

let package = Package(
    name: "MoeEdge",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "MoeEdge", targets: ["MoeEdge"]),
    ],
    targets: [
        .binaryTarget(name: "MoeEdgeFFI", path: "MoeEdgeFFI.xcframework"),
        .target(name: "MoeEdge", dependencies: ["MoeEdgeFFI"], path: "Sources/MoeEdge"),
    ]
)
