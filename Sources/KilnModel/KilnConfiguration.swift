import Foundation
import Yams

/// `kiln.yaml`: where Kiln keeps its data and how it reaches registries. Later sections
/// (regions, instance types, prices) join this type as their issues land.
///
/// ```yaml
/// dataDirectory: /var/lib/kiln
/// transfers: {concurrency: 4}
/// registries:
///   registry.example:5000: {caCertificate: /etc/kiln/ca.pem, username: robot, passwordEnv: ROBOT_TOKEN}
///   127.0.0.1:5001: {insecure: true}
/// instanceTypes:
///   build.huge: {vCPUs: 2, memoryMiB: 16384, pidsLimit: 8192, pricePerHour: 0.33}
///   t3.small: {pricePerHour: 0.0228}          # a default type with another price
/// regions:
///   eu-west-1: {registry: "registry.eu.example", storagePerGBMonth: 0.10, transferPerGB: 0.02}
/// pricing: {storagePerGBMonth: 0.10, transferPerGB: 0.02}   # for regions that set none
/// bootstrap:
///   mirrors: {ubuntu: "http://archive.ubuntu.com/ubuntu"}
/// ```
public struct KilnConfiguration: Sendable, Hashable {
    public struct Registry: Sendable, Hashable {
        public var insecure: Bool?
        public var caCertificate: String?
        public var username: String?
        public var password: String?

        public init(insecure: Bool? = nil, caCertificate: String? = nil, username: String? = nil, password: String? = nil) {
            self.insecure = insecure
            self.caCertificate = caCertificate
            self.username = username
            self.password = password
        }
    }

    /// An instance type's size and price, overriding or adding to Kiln's EC2-like defaults;
    /// a field left out keeps the default type's value.
    public struct InstanceTypeSize: Sendable, Hashable {
        public var vCPUs: Double?
        public var memoryMiB: Int?
        public var pidsLimit: Int?
        /// US dollars per hour of instance time.
        public var pricePerHour: Double?

        public init(vCPUs: Double? = nil, memoryMiB: Int? = nil, pidsLimit: Int? = nil, pricePerHour: Double? = nil) {
            self.vCPUs = vCPUs
            self.memoryMiB = memoryMiB
            self.pidsLimit = pidsLimit
            self.pricePerHour = pricePerHour
        }
    }

    /// A distribution target: a registry (host[:port]), an optional repository prefix, and
    /// what storing and sending images there costs.
    /// Where a region keeps machine-image disks: a directory, or an S3-compatible bucket.
    public enum ImageStore: Sendable, Hashable {
        case directory(String)
        case s3(S3Bucket)
    }

    public struct S3Bucket: Sendable, Hashable {
        /// nil: AWS's own endpoint for `region`.
        public var endpoint: String?
        public var bucket: String
        public var prefix: String
        public var region: String
        public var accessKeyId: String
        public var secretAccessKey: String

        public init(endpoint: String?, bucket: String, prefix: String, region: String, accessKeyId: String, secretAccessKey: String) {
            self.endpoint = endpoint
            self.bucket = bucket
            self.prefix = prefix
            self.region = region
            self.accessKeyId = accessKeyId
            self.secretAccessKey = secretAccessKey
        }
    }

    public struct Region: Sendable, Hashable {
        /// The OCI registry container images go to; empty in a region that only stores disks.
        public var registry: String
        public var imageStore: ImageStore?
        /// Machine images' disks also go to this region's registry as KubeVirt containerDisks,
        /// at `registry/[prefix/]REPOSITORY:VERSION`.
        public var containerDiskRepository: String?
        public var repositoryPrefix: String?
        /// US dollars per GB-month stored (nil: `pricing.storagePerGBMonth`).
        public var storagePerGBMonth: Double?
        /// US dollars per GB sent to this region from another (nil: `pricing.transferPerGB`).
        public var transferPerGB: Double?

        public init(registry: String, repositoryPrefix: String? = nil, storagePerGBMonth: Double? = nil, transferPerGB: Double? = nil) {
            self.registry = registry
            self.repositoryPrefix = repositoryPrefix
            self.storagePerGBMonth = storagePerGBMonth
            self.transferPerGB = transferPerGB
        }
    }

    /// Prices for regions that set none: Amazon ECR storage and inter-region data transfer out
    /// of us-east-1, in US dollars (GB = 2^30 bytes, as AWS bills).
    public struct Pricing: Sendable, Hashable {
        public var storagePerGBMonth = 0.10
        public var transferPerGB = 0.02

        public init() {}
    }

    /// A key pair `kiln server` accepts SigV4 signatures from.
    public struct Credential: Sendable, Hashable {
        public var accessKeyId: String
        public var secretAccessKey: String

        public init(accessKeyId: String, secretAccessKey: String) {
            self.accessKeyId = accessKeyId
            self.secretAccessKey = secretAccessKey
        }
    }

    /// Where image state changes are posted. An infrastructure configuration's `snsTopicArn`
    /// (`arn:aws:sns:REGION:ACCOUNT:NAME`) names one; `allImages` ones get every image's.
    public struct Webhook: Sendable, Hashable {
        public var name: String
        public var url: String
        /// Key of the HMAC-SHA256 signature in `X-Kiln-Signature`.
        public var secret: String?
        public var allImages = false

        public init(name: String, url: String, secret: String? = nil, allImages: Bool = false) {
            self.name = name
            self.url = url
            self.secret = secret
            self.allImages = allImages
        }
    }

    /// What starts pipelines besides their cron schedules and manual starts (`kiln server`).
    public struct Triggers: Sendable, Hashable {
        /// A package-update check of one pipeline's latest image, on its own schedule.
        public struct PackageCheck: Sendable, Hashable {
            public var pipeline: String
            /// `cron(…)` or `rate(…)`, as a pipeline's scheduleExpression; rates count from the server's start.
            public var schedule: String
            public var timezone: String?
            /// Count only upgrades from a security origin (apt's `*-security` suites, dnf repositories named so).
            public var securityOnly = false

            public init(pipeline: String, schedule: String, timezone: String? = nil, securityOnly: Bool = false) {
                self.pipeline = pipeline
                self.schedule = schedule
                self.timezone = timezone
                self.securityOnly = securityOnly
            }
        }

        /// The shared secret a registry's notifications must carry in `registryEventHeader`;
        /// nil turns the receiver off.
        public var registryEventSecret: String?
        public var registryEventHeader = "Authorization"
        /// Seconds between HEAD requests for each registry parent; nil turns polling off.
        public var parentPollSeconds: Int?
        /// Base-image events for one pipeline inside this many seconds start one build.
        public var debounceSeconds = 2
        public var packageChecks: [PackageCheck] = []

        public init() {}
    }

    public var dataDirectory: String
    /// `kiln server`'s address (`host:port`), key pairs, build slots and webhooks.
    public var listen = "127.0.0.1:8080"
    public var credentials: [Credential] = []
    public var maxConcurrentBuilds = 2
    public var webhooks: [Webhook] = []
    public var triggers = Triggers()
    public var registries: [String: Registry] = [:]
    /// Regions by name, as distribution configurations name them.
    public var regions: [String: Region] = [:]
    /// The home region in ARNs, and the account id.
    public var homeRegion = "us-east-1"
    public var accountId = "000000000000"
    public var instanceTypes: [String: InstanceTypeSize] = [:]
    /// Mirrors for `bootstrap:` parents, by distribution (`debian`, `ubuntu`).
    public var bootstrapMirrors: [String: String] = [:]
    /// Build from what the store holds: registry parents are not looked up again and package
    /// sources are not asked (`offline: true`, or `kiln build --offline`).
    public var offline = false
    /// `isolated` (default): builders get their own network namespace with NAT; `host`: the
    /// host's network, loopback services included (trusted documents only).
    public var builderNetwork = "isolated"
    /// Blob transfers in flight at once, over all destinations.
    public var transferConcurrency = 4
    public var pricing = Pricing()

    /// What storing a GB for a month in `region` costs.
    public func storagePrice(region: String) -> Double { regions[region]?.storagePerGBMonth ?? pricing.storagePerGBMonth }

    /// What sending a GB to `region` costs; nothing within the home region.
    public func transferPrice(region: String) -> Double {
        region == homeRegion ? 0 : regions[region]?.transferPerGB ?? pricing.transferPerGB
    }

    public init(dataDirectory: String = KilnConfiguration.defaultDataDirectory()) {
        self.dataDirectory = dataDirectory
    }

    /// `$KILN_DATA_DIR`, else `/var/lib/kiln` for root, else `~/.local/share/kiln`.
    public static func defaultDataDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let directory = environment["KILN_DATA_DIR"], !directory.isEmpty { return directory }
        if getuid() == 0 { return "/var/lib/kiln" }
        return (environment["HOME"] ?? NSHomeDirectory()) + "/.local/share/kiln"
    }

    /// Reads `path`; relative paths inside are relative to the file's directory. Every problem
    /// names its line.
    public static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> KilnConfiguration {
        let text = try YAMLBounds.readText(path, what: "Kiln configuration")
        let base = (path as NSString).deletingLastPathComponent
        func absolute(_ value: String) -> String {
            value.hasPrefix("/") ? value : ((base.isEmpty ? "." : base) as NSString).appendingPathComponent(value)
        }
        func issue(_ node: Node, _ message: String) -> KilnError {
            let mark = node.mark
            return KilnError(.invalidArgument, "\(path):\(mark?.line ?? 1): \(message)")
        }
        func mapping(_ node: Node, _ what: String) throws -> [(String, Node, Node)] {
            guard case .mapping(let entries) = node else { throw issue(node, "\(what) must be a mapping") }
            return try entries.map { key, value in
                guard let name = key.string else { throw issue(key, "keys of \(what) must be strings") }
                return (name, key, value)
            }
        }
        func string(_ node: Node, _ what: String) throws -> String {
            guard case .scalar(let scalar) = node, !scalar.string.isEmpty else { throw issue(node, "\(what) must be a non-empty string") }
            return scalar.string
        }
        func bool(_ node: Node, _ what: String) throws -> Bool {
            guard let value = node.bool else { throw issue(node, "\(what) must be true or false") }
            return value
        }
        func price(_ node: Node, _ what: String) throws -> Double {
            guard let value = node.float, value >= 0, value.isFinite else {
                throw issue(node, "\(what) must be a price in US dollars, 0 or more (like 0.0416)")
            }
            return value
        }

        try YAMLBounds.check(text, source: path, what: "Kiln configuration")
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw KilnError(.invalidArgument, "\(path) is not valid YAML: \(error)")
        }
        var configuration = KilnConfiguration(dataDirectory: defaultDataDirectory(environment: environment))
        guard let root else { return configuration }
        for (key, keyNode, value) in try mapping(root, "kiln.yaml") {
            switch key {
            case "dataDirectory":
                configuration.dataDirectory = absolute(try string(value, "dataDirectory"))
            case "transfers":
                for (field, fieldNode, fieldValue) in try mapping(value, "transfers") {
                    guard field == "concurrency" else { throw issue(fieldNode, "unknown key 'transfers.\(field)'; allowed: concurrency") }
                    guard let count = fieldValue.int, (1...64).contains(count) else {
                        throw issue(fieldValue, "transfers.concurrency must be a number from 1 to 64")
                    }
                    configuration.transferConcurrency = count
                }
            case "registries":
                for (host, _, settings) in try mapping(value, "registries") {
                    var registry = Registry()
                    var passwordEnv: (String, Node)?
                    for (field, fieldNode, fieldValue) in try mapping(settings, "registries.\(host)") {
                        let what = "registries.\(host).\(field)"
                        switch field {
                        case "insecure": registry.insecure = try bool(fieldValue, what)
                        case "caCertificate": registry.caCertificate = absolute(try string(fieldValue, what))
                        case "username": registry.username = try string(fieldValue, what)
                        case "password": registry.password = try string(fieldValue, what)
                        case "passwordEnv": passwordEnv = (try string(fieldValue, what), fieldValue)
                        default:
                            throw issue(
                                fieldNode, "unknown key '\(what)'; allowed: insecure, caCertificate, username, password, passwordEnv")
                        }
                    }
                    if let (variable, node) = passwordEnv {
                        guard let secret = environment[variable] else {
                            throw issue(node, "registries.\(host).passwordEnv names \(variable), which is not set in the environment")
                        }
                        registry.password = secret
                    }
                    if (registry.username == nil) != (registry.password == nil) {
                        throw issue(settings, "registries.\(host) needs both username and password (or passwordEnv), or neither")
                    }
                    configuration.registries[host] = registry
                }
            case "instanceTypes":
                for (name, _, sizeNode) in try mapping(value, "instanceTypes") {
                    var size = InstanceTypeSize()
                    for (field, fieldNode, fieldValue) in try mapping(sizeNode, "instanceTypes.\(name)") {
                        let what = "instanceTypes.\(name).\(field)"
                        switch field {
                        case "vCPUs":
                            guard let number = fieldValue.float, number > 0 else {
                                throw issue(fieldValue, "\(what) must be a positive number")
                            }
                            size.vCPUs = number
                        case "memoryMiB":
                            guard let number = fieldValue.int, number >= 16 else {
                                throw issue(fieldValue, "\(what) must be a whole number of MiB, at least 16")
                            }
                            size.memoryMiB = number
                        case "pidsLimit":
                            guard let number = fieldValue.int, number > 0 else {
                                throw issue(fieldValue, "\(what) must be a positive whole number")
                            }
                            size.pidsLimit = number
                        case "pricePerHour":
                            size.pricePerHour = try price(fieldValue, what)
                        default:
                            throw issue(fieldNode, "unknown key '\(what)'; allowed: vCPUs, memoryMiB, pidsLimit, pricePerHour")
                        }
                    }
                    configuration.instanceTypes[name] = size
                }
            case "regions":
                for (name, _, regionNode) in try mapping(value, "regions") {
                    var registry: String?
                    var prefix: String?
                    var storage: Double?
                    var transfer: Double?
                    var settings = Registry()
                    var store: ImageStore?
                    var containerDisks: String?
                    for (field, fieldNode, fieldValue) in try mapping(regionNode, "regions.\(name)") {
                        let what = "regions.\(name).\(field)"
                        switch field {
                        case "registry": registry = try string(fieldValue, what)
                        case "imageStore":
                            store = try imageStore(
                                fieldValue, what: what, issue: issue, mapping: mapping, string: string, absolute: absolute,
                                environment: environment)
                        case "repositoryPrefix": prefix = try string(fieldValue, what)
                        case "containerDiskRepository": containerDisks = try string(fieldValue, what)
                        case "storagePerGBMonth": storage = try price(fieldValue, what)
                        case "transferPerGB": transfer = try price(fieldValue, what)
                        case "insecure": settings.insecure = try bool(fieldValue, what)
                        case "caCertificate": settings.caCertificate = absolute(try string(fieldValue, what))
                        case "username": settings.username = try string(fieldValue, what)
                        case "password": settings.password = try string(fieldValue, what)
                        case "passwordEnv":
                            let variable = try string(fieldValue, what)
                            guard let secret = environment[variable] else {
                                throw issue(fieldValue, "\(what) names \(variable), which is not set in the environment")
                            }
                            settings.password = secret
                        default:
                            throw issue(
                                fieldNode,
                                "unknown key '\(what)'; allowed: registry, imageStore, containerDiskRepository, repositoryPrefix, storagePerGBMonth, transferPerGB, insecure, caCertificate, username, password, passwordEnv"
                            )
                        }
                    }
                    guard registry != nil || store != nil else {
                        throw issue(
                            regionNode, "regions.\(name) needs registry: host[:port] (container images), imageStore (disks), or both")
                    }
                    var region = Region(
                        registry: registry ?? "", repositoryPrefix: prefix, storagePerGBMonth: storage, transferPerGB: transfer)
                    if containerDisks != nil, registry == nil {
                        throw issue(
                            regionNode, "regions.\(name).containerDiskRepository needs a registry to push to; add regions.\(name).registry")
                    }
                    region.imageStore = store
                    region.containerDiskRepository = containerDisks
                    configuration.regions[name] = region
                    if let registry, settings != Registry() { configuration.registries[registry] = settings }
                }
            case "pricing":
                for (field, fieldNode, fieldValue) in try mapping(value, "pricing") {
                    switch field {
                    case "storagePerGBMonth": configuration.pricing.storagePerGBMonth = try price(fieldValue, "pricing.\(field)")
                    case "transferPerGB": configuration.pricing.transferPerGB = try price(fieldValue, "pricing.\(field)")
                    default: throw issue(fieldNode, "unknown key 'pricing.\(field)'; allowed: storagePerGBMonth, transferPerGB")
                    }
                }
            case "offline":
                configuration.offline = try bool(value, "offline")
            case "builderNetwork":
                let network = try string(value, "builderNetwork")
                guard ["isolated", "host"].contains(network) else {
                    throw issue(value, "builderNetwork must be isolated (own network namespace, NAT) or host, not '\(network)'")
                }
                configuration.builderNetwork = network
            case "listen":
                configuration.listen = try string(value, "listen")
                guard Self.listenAddress(configuration.listen) != nil else {
                    throw issue(value, "listen must be host:port, like 127.0.0.1:8080 or 0.0.0.0:8443, not '\(configuration.listen)'")
                }
            case "maxConcurrentBuilds":
                guard let count = value.int, (1...64).contains(count) else {
                    throw issue(value, "maxConcurrentBuilds must be a number from 1 to 64")
                }
                configuration.maxConcurrentBuilds = count
            case "credentials":
                guard case .sequence(let entries) = value else {
                    throw issue(value, "credentials must be a list of {accessKeyId, secretAccessKey or secretAccessKeyEnv}")
                }
                for entry in entries {
                    var keyId: String?
                    var secret: String?
                    for (field, fieldNode, fieldValue) in try mapping(entry, "a credentials entry") {
                        switch field {
                        case "accessKeyId": keyId = try string(fieldValue, "credentials.accessKeyId")
                        case "secretAccessKey": secret = try string(fieldValue, "credentials.secretAccessKey")
                        case "secretAccessKeyEnv":
                            let variable = try string(fieldValue, "credentials.secretAccessKeyEnv")
                            guard let text = environment[variable], !text.isEmpty else {
                                throw issue(
                                    fieldValue, "credentials.secretAccessKeyEnv names \(variable), which is not set in the environment")
                            }
                            secret = text
                        default:
                            throw issue(
                                fieldNode, "unknown key 'credentials.\(field)'; allowed: accessKeyId, secretAccessKey, secretAccessKeyEnv")
                        }
                    }
                    guard let keyId, let secret else {
                        throw issue(entry, "a credentials entry needs accessKeyId and secretAccessKey (or secretAccessKeyEnv)")
                    }
                    guard keyId.count >= 3, keyId.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
                        throw issue(entry, "credentials.accessKeyId must be letters and digits (like AKIAKILNEXAMPLE), not '\(keyId)'")
                    }
                    configuration.credentials.append(Credential(accessKeyId: keyId, secretAccessKey: secret))
                }
            case "webhooks":
                guard case .sequence(let entries) = value else { throw issue(value, "webhooks must be a list of {name, url, secret}") }
                for entry in entries {
                    var name: String?
                    var url: String?
                    var webhook = Webhook(name: "", url: "")
                    for (field, fieldNode, fieldValue) in try mapping(entry, "a webhooks entry") {
                        let what = "webhooks.\(field)"
                        switch field {
                        case "name": name = try string(fieldValue, what)
                        case "url":
                            let text = try string(fieldValue, what)
                            guard let parsed = URL(string: text), ["http", "https"].contains(parsed.scheme ?? ""), parsed.host != nil else {
                                throw issue(fieldValue, "webhooks.url must be an http or https URL, not '\(text)'")
                            }
                            url = text
                        case "secret": webhook.secret = try string(fieldValue, what)
                        case "secretEnv":
                            let variable = try string(fieldValue, what)
                            guard let text = environment[variable], !text.isEmpty else {
                                throw issue(fieldValue, "webhooks.secretEnv names \(variable), which is not set in the environment")
                            }
                            webhook.secret = text
                        case "allImages": webhook.allImages = try bool(fieldValue, what)
                        default: throw issue(fieldNode, "unknown key '\(what)'; allowed: name, url, secret, secretEnv, allImages")
                        }
                    }
                    guard let name, let url else { throw issue(entry, "a webhooks entry needs name and url") }
                    guard !configuration.webhooks.contains(where: { $0.name == name }) else {
                        throw issue(entry, "two webhooks are named '\(name)'")
                    }
                    webhook.name = name
                    webhook.url = url
                    configuration.webhooks.append(webhook)
                }
            case "triggers":
                configuration.triggers = try triggers(
                    value, issue: issue, mapping: mapping, string: string, bool: bool, environment: environment)
            case "homeRegion":
                configuration.homeRegion = try string(value, "homeRegion")
            case "accountId":
                let account = try string(value, "accountId")
                guard account.count == 12, account.allSatisfy(\.isNumber) else { throw issue(value, "accountId must be 12 digits") }
                configuration.accountId = account
            case "bootstrap":
                for (field, fieldNode, fieldValue) in try mapping(value, "bootstrap") {
                    guard field == "mirrors" else { throw issue(fieldNode, "unknown key 'bootstrap.\(field)'; allowed: mirrors") }
                    for (distribution, _, mirror) in try mapping(fieldValue, "bootstrap.mirrors") {
                        configuration.bootstrapMirrors[distribution] = try string(mirror, "bootstrap.mirrors.\(distribution)")
                    }
                }
            default:
                throw issue(
                    keyNode,
                    "unknown key '\(key)'; allowed: dataDirectory, registries, regions, homeRegion, accountId, transfers, instanceTypes, pricing, bootstrap, offline, builderNetwork, listen, credentials, maxConcurrentBuilds, webhooks, triggers"
                )
            }
        }
        try configuration.applyServerEnvironment(environment)
        return configuration
    }

    /// A region's `imageStore`: `{directory: PATH}` or `{s3: {bucket, prefix, endpoint, region,
    /// accessKeyId, secretAccessKey | secretAccessKeyEnv}}`.
    static func imageStore(
        _ node: Node, what: String, issue: (Node, String) -> KilnError, mapping: (Node, String) throws -> [(String, Node, Node)],
        string: (Node, String) throws -> String, absolute: (String) -> String, environment: [String: String]
    ) throws -> ImageStore {
        let entries = try mapping(node, what)
        guard entries.count == 1, let entry = entries.first else {
            throw issue(node, "\(what) must be one of {directory: PATH} or {s3: {bucket, …}}")
        }
        let (kind, kindNode, value) = entry
        switch kind {
        case "directory":
            return .directory(absolute(try string(value, "\(what).directory")))
        case "s3":
            var bucket: String?
            var prefix = ""
            var endpoint: String?
            var region = "us-east-1"
            var keyId: String?
            var secret: String?
            for (field, fieldNode, fieldValue) in try mapping(value, "\(what).s3") {
                let label = "\(what).s3.\(field)"
                switch field {
                case "bucket": bucket = try string(fieldValue, label)
                case "prefix": prefix = try string(fieldValue, label).trimmingCharacters(in: CharacterSet(charactersIn: "/"))
                case "endpoint":
                    let text = try string(fieldValue, label)
                    guard let url = URL(string: text), ["http", "https"].contains(url.scheme ?? ""), url.host != nil else {
                        throw issue(fieldValue, "\(label) must be an http or https URL, like http://127.0.0.1:9000")
                    }
                    endpoint = text
                case "region": region = try string(fieldValue, label)
                case "accessKeyId": keyId = try string(fieldValue, label)
                case "secretAccessKey": secret = try string(fieldValue, label)
                case "secretAccessKeyEnv":
                    let variable = try string(fieldValue, label)
                    guard let text = environment[variable], !text.isEmpty else {
                        throw issue(fieldValue, "\(label) names \(variable), which is not set in the environment")
                    }
                    secret = text
                default:
                    throw issue(
                        fieldNode,
                        "unknown key '\(label)'; allowed: bucket, prefix, endpoint, region, accessKeyId, secretAccessKey, secretAccessKeyEnv"
                    )
                }
            }
            guard let bucket, let keyId, let secret else {
                throw issue(value, "\(what).s3 needs bucket, accessKeyId and secretAccessKey (or secretAccessKeyEnv)")
            }
            return .s3(
                S3Bucket(endpoint: endpoint, bucket: bucket, prefix: prefix, region: region, accessKeyId: keyId, secretAccessKey: secret))
        default:
            throw issue(kindNode, "unknown key '\(what).\(kind)'; allowed: directory, s3")
        }
    }

    /// The `triggers` mapping: registry notifications, parent polling, debounce and package checks.
    static func triggers(
        _ node: Node, issue: (Node, String) -> KilnError, mapping: (Node, String) throws -> [(String, Node, Node)],
        string: (Node, String) throws -> String, bool: (Node, String) throws -> Bool, environment: [String: String]
    ) throws -> Triggers {
        func seconds(_ node: Node, _ what: String) throws -> Int {
            let text = try string(node, what)
            guard let value = Duration.parseSeconds(text), value >= 1, value <= 86_400 * 7 else {
                throw issue(node, "\(what) must be a duration from 1s to 7d, like 30s, 5m or 1h, not '\(text)'")
            }
            return value
        }
        var triggers = Triggers()
        for (key, keyNode, value) in try mapping(node, "triggers") {
            let what = "triggers.\(key)"
            switch key {
            case "registryEvents":
                for (field, fieldNode, fieldValue) in try mapping(value, what) {
                    switch field {
                    case "header": triggers.registryEventHeader = try string(fieldValue, "\(what).header")
                    case "secret": triggers.registryEventSecret = try string(fieldValue, "\(what).secret")
                    case "secretEnv":
                        let variable = try string(fieldValue, "\(what).secretEnv")
                        guard let text = environment[variable], !text.isEmpty else {
                            throw issue(fieldValue, "\(what).secretEnv names \(variable), which is not set in the environment")
                        }
                        triggers.registryEventSecret = text
                    default: throw issue(fieldNode, "unknown key '\(what).\(field)'; allowed: header, secret, secretEnv")
                    }
                }
                guard triggers.registryEventSecret != nil else {
                    throw issue(value, "\(what) needs secret or secretEnv: the registry's notifications must prove they come from it")
                }
            case "parentPollInterval": triggers.parentPollSeconds = try seconds(value, what)
            case "debounce": triggers.debounceSeconds = try seconds(value, what)
            case "packageChecks":
                guard case .sequence(let entries) = value else {
                    throw issue(value, "\(what) must be a list of {pipeline, schedule, timezone, securityOnly}")
                }
                for entry in entries {
                    var check = Triggers.PackageCheck(pipeline: "", schedule: "")
                    for (field, fieldNode, fieldValue) in try mapping(entry, "a \(what) entry") {
                        switch field {
                        case "pipeline": check.pipeline = try string(fieldValue, "\(what).pipeline")
                        case "schedule": check.schedule = try string(fieldValue, "\(what).schedule")
                        case "timezone": check.timezone = try string(fieldValue, "\(what).timezone")
                        case "securityOnly": check.securityOnly = try bool(fieldValue, "\(what).securityOnly")
                        default:
                            throw issue(fieldNode, "unknown key '\(what).\(field)'; allowed: pipeline, schedule, timezone, securityOnly")
                        }
                    }
                    guard !check.pipeline.isEmpty, !check.schedule.isEmpty else {
                        throw issue(entry, "a \(what) entry needs pipeline and schedule (like rate(6 hours) or cron(0 */6 * * ? *))")
                    }
                    do {
                        _ = try ScheduleExpression(parsing: check.schedule, timezone: check.timezone)
                    } catch let error as KilnError {
                        throw issue(entry, "\(what) of pipeline \(check.pipeline): \(error.message)")
                    }
                    triggers.packageChecks.append(check)
                }
            default:
                throw issue(keyNode, "unknown key '\(what)'; allowed: registryEvents, parentPollInterval, debounce, packageChecks")
            }
        }
        return triggers
    }

    /// `KILN_LISTEN`, `KILN_ACCOUNT_ID`, `KILN_HOME_REGION`, `KILN_MAX_CONCURRENT_BUILDS`, and
    /// `KILN_ACCESS_KEY_ID` with `KILN_SECRET_ACCESS_KEY` (one more key pair) win over the file.
    public mutating func applyServerEnvironment(_ environment: [String: String]) throws {
        if let listen = environment["KILN_LISTEN"], !listen.isEmpty {
            guard Self.listenAddress(listen) != nil else {
                throw KilnError(.invalidArgument, "KILN_LISTEN must be host:port, like 127.0.0.1:8080, not '\(listen)'")
            }
            self.listen = listen
        }
        if let account = environment["KILN_ACCOUNT_ID"], !account.isEmpty {
            guard account.count == 12, account.allSatisfy(\.isNumber) else {
                throw KilnError(.invalidArgument, "KILN_ACCOUNT_ID must be 12 digits, not '\(account)'")
            }
            accountId = account
        }
        if let region = environment["KILN_HOME_REGION"], !region.isEmpty { homeRegion = region }
        if let text = environment["KILN_MAX_CONCURRENT_BUILDS"], !text.isEmpty {
            guard let count = Int(text), (1...64).contains(count) else {
                throw KilnError(.invalidArgument, "KILN_MAX_CONCURRENT_BUILDS must be a number from 1 to 64, not '\(text)'")
            }
            maxConcurrentBuilds = count
        }
        if let keyId = environment["KILN_ACCESS_KEY_ID"], !keyId.isEmpty {
            guard let secret = environment["KILN_SECRET_ACCESS_KEY"], !secret.isEmpty else {
                throw KilnError(.invalidArgument, "KILN_ACCESS_KEY_ID is set but KILN_SECRET_ACCESS_KEY is not; set both or neither")
            }
            credentials.removeAll { $0.accessKeyId == keyId }
            credentials.append(Credential(accessKeyId: keyId, secretAccessKey: secret))
        }
    }

    /// `host:port` split, or nil when it is not one (`[::1]:8080` for IPv6).
    public static func listenAddress(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }
}
