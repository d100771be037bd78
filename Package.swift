// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "Kiln",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kiln", targets: ["kiln"]),
        .executable(name: "kiln-init", targets: ["kiln-init"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .target(
            name: "KilnModel",
            dependencies: [.product(name: "Yams", package: "Yams")]
        ),
        .target(name: "CKilnSystem"),
        // Processes, signals, and the one runc wrapper every runc call goes through.
        .target(name: "KilnSystem", dependencies: ["KilnModel", "CKilnSystem"]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(
            name: "KilnTOE",
            dependencies: [
                "KilnModel",
                "KilnSystem",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // OCI values, the content store and archive formats: no network.
        .target(
            name: "KilnOCI",
            dependencies: ["KilnModel", "CKilnSystem", "CZlib", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // Registries: the client, auth, credentials, and copying images between locations.
        .target(
            name: "KilnRegistry",
            dependencies: [
                "KilnModel",
                "KilnOCI",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .target(
            name: "KilnInstances",
            dependencies: ["KilnModel", "KilnSystem", "KilnTOE", "KilnOCI", "KilnRegistry", "CKilnSystem"]
        ),
        .target(
            name: "KilnEngine",
            dependencies: [
                "KilnModel",
                "KilnSystem",
                "KilnTOE",
                "KilnOCI",
                "KilnRegistry",
                "KilnInstances",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // Persistence behind the records protocols: SQLite through GRDB.
        .target(name: "KilnStore", dependencies: ["KilnModel", .product(name: "GRDB", package: "GRDB.swift")]),
        // Cron and rate schedules, start conditions, registry events, parent polls and package checks.
        .target(
            name: "KilnScheduler",
            dependencies: [
                "KilnModel",
                "KilnStore",
                "KilnOCI",
                "KilnRegistry",
                "KilnInstances",
                "KilnEngine",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The Image Builder REST-JSON API, the build queue's workers, webhooks and metrics.
        .target(
            name: "KilnServer",
            dependencies: [
                "KilnModel",
                "KilnStore",
                "KilnSystem",
                "KilnOCI",
                "KilnRegistry",
                "KilnInstances",
                "KilnEngine",
                "KilnScheduler",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Process 1 of every instance: static, so it runs in images without a libc or a shell.
        .executableTarget(name: "kiln-init", linkerSettings: [.unsafeFlags(["-static-executable"])]),
        .target(
            name: "KilnCLI",
            dependencies: [
                "KilnModel",
                "KilnTOE",
                "KilnSystem",
                "KilnOCI",
                "KilnRegistry",
                "KilnInstances",
                "KilnEngine",
                "KilnStore",
                "KilnServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "kiln", dependencies: ["KilnCLI", "kiln-init"]),
        // Fixtures shared by the test targets (never by a product).
        .target(name: "KilnTestSupport", path: "Tests/KilnTestSupport"),
        .testTarget(name: "KilnModelTests", dependencies: ["KilnTestSupport", "KilnModel"]),
        .testTarget(name: "KilnTOETests", dependencies: ["KilnTestSupport", "KilnTOE", "KilnSystem", "KilnModel"]),
        .testTarget(name: "KilnOCITests", dependencies: ["KilnTestSupport", "KilnOCI", "KilnModel", "CKilnSystem"]),
        .testTarget(name: "KilnRegistryTests", dependencies: ["KilnTestSupport", "KilnRegistry", "KilnOCI", "KilnModel"]),
        .testTarget(name: "KilnStoreTests", dependencies: ["KilnTestSupport", "KilnStore", "KilnModel"]),
        .testTarget(
            name: "KilnServerTests",
            dependencies: ["KilnTestSupport", "KilnServer", "KilnStore", "KilnModel", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(
            name: "KilnSchedulerTests", dependencies: ["KilnTestSupport", "KilnScheduler", "KilnStore", "KilnModel", "KilnEngine"]),
        .testTarget(name: "KilnCLITests", dependencies: ["KilnTestSupport", "KilnCLI", "kiln"]),
        .testTarget(
            name: "KilnEngineTests",
            dependencies: ["KilnTestSupport", "KilnEngine", "KilnInstances", "KilnOCI", "KilnRegistry", "KilnModel", "CKilnSystem"]),
        .testTarget(
            name: "KilnInstancesTests",
            dependencies: [
                "KilnTestSupport", "KilnInstances", "KilnOCI", "KilnRegistry", "KilnSystem", "KilnTOE", "KilnModel", "kiln-init",
            ]),
    ]
)
