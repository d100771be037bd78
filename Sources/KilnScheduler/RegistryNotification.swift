import Foundation
import KilnModel
import KilnOCI

/// A distribution registry's notification envelope (`application/vnd.docker.distribution.events.v1+json`):
/// the manifest pushes in it that name a tag. Blob pushes, pulls and deletes are ignored.
public struct RegistryNotification: Sendable, Hashable {
    public struct Push: Sendable, Hashable {
        /// The registry's address as the pusher used it (`request.host`), or from `target.url`.
        public var registry: String?
        public var repository: String
        public var tag: String
        public var digest: String

        public var reference: String { "\(registry.map { $0 + "/" } ?? "")\(repository):\(tag)" }
    }

    public var pushes: [Push]
    /// Events in the envelope, pushes or not.
    public var eventCount: Int

    private struct Envelope: Decodable {
        var events: [Event]
    }

    private struct Event: Decodable {
        struct Target: Decodable {
            var mediaType: String?
            var repository: String?
            var digest: String?
            var tag: String?
            var url: String?
        }

        struct Request: Decodable { var host: String? }

        var action: String?
        var target: Target?
        var request: Request?
    }

    /// Parses an envelope; an error says what is wrong with it.
    public init(parsing body: Data) throws {
        let envelope: Envelope
        do {
            envelope = try JSONDecoder().decode(Envelope.self, from: body)
        } catch {
            throw KilnError(
                .invalidArgument,
                "the body is not a registry notification envelope ({\"events\": [...]}, as distribution sends): \(error)")
        }
        eventCount = envelope.events.count
        pushes = envelope.events.compactMap { event in
            guard event.action == "push", let target = event.target, let repository = target.repository, let tag = target.tag,
                !tag.isEmpty, let digest = target.digest,
                target.mediaType.map({ MediaType.isIndex($0) || $0.contains("manifest") }) ?? true
            else { return nil }
            let host =
                event.request?.host
                ?? target.url.flatMap { URL(string: $0) }.flatMap { url in url.host.map { host in url.port.map { "\(host):\($0)" } ?? host }
                }
            return Push(registry: host, repository: repository, tag: tag, digest: digest)
        }
    }

    /// Whether `push` is of the tag a pipeline's parent names.
    public static func matches(_ push: Push, parent: String) -> Bool {
        guard let reference = try? ImageReference(parent), reference.digest == nil else { return false }
        guard reference.repository == push.repository, (reference.tag ?? "latest") == push.tag else { return false }
        guard let registry = push.registry else { return true }
        return sameRegistry(registry, reference.registry)
    }

    static func sameRegistry(_ first: String, _ second: String) -> Bool {
        func normal(_ host: String) -> String {
            let lower = host.lowercased()
            return lower.hasPrefix("localhost:") ? "127.0.0.1:" + lower.dropFirst("localhost:".count) : lower
        }
        return normal(first) == normal(second)
    }
}
