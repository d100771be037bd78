import AsyncHTTPClient
import Foundation
import KilnModel
import KilnRegistry
import NIOCore
import NIOSSL

/// Small documents over https (component `uri`s, package indexes): the whole body, verified
/// against the system's CAs or a private CA (kiln.yaml `registries.<host>.caCertificate`), with
/// a size limit. Plain http only where the caller allows it (package indexes are signed).
public enum HTTPSDownload {
    /// As below, with the CA of the URL's `host[:port]` taken from `caCertificates` (kiln.yaml's registries).
    public static func fetch(
        _ url: String, caCertificates: [String: String], limit: Int = 16 << 20, timeout: TimeAmount = .seconds(60),
        allowPlainHTTP: Bool = false
    ) async throws -> Data {
        let host = URL(string: url).flatMap { url in url.host.map { host in url.port.map { "\(host):\($0)" } ?? host } } ?? ""
        return try await fetch(url, caCertificate: caCertificates[host], limit: limit, timeout: timeout, allowPlainHTTP: allowPlainHTTP)
    }

    public static func fetch(
        _ url: String, caCertificate: String? = nil, limit: Int = 16 << 20, timeout: TimeAmount = .seconds(60), allowPlainHTTP: Bool = false
    ) async throws -> Data {
        guard url.hasPrefix("https://") || (allowPlainHTTP && url.hasPrefix("http://")) else {
            throw KilnError(.invalidArgument, "\(url) is not an https URL")
        }
        var client = RegistryClient.sharedHTTPClient
        var owned: HTTPClient?
        if let caCertificate {
            var tls = TLSConfiguration.makeClientConfiguration()
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caCertificate))
            } catch {
                throw KilnError(.invalidArgument, "cannot read the CA certificate '\(caCertificate)' for \(url): \(error); give a PEM file")
            }
            owned = RegistryClient.makeHTTPClient(tls: tls)
            client = owned!
        }
        defer { if let owned { Task { try? await owned.shutdown() } } }
        let response: HTTPClientResponse
        do {
            response = try await client.execute(HTTPClientRequest(url: url), timeout: timeout)
        } catch {
            throw KilnError(
                .network,
                "cannot download \(url): \(error)\(caCertificate == nil ? " (for a private CA, set registries.<host>.caCertificate in kiln.yaml)" : "")"
            )
        }
        guard response.status == .ok else {
            throw KilnError(
                .network, "cannot download \(url): the server answered HTTP \(response.status.code) \(response.status.reasonPhrase)")
        }
        do {
            var body = try await response.body.collect(upTo: limit)
            return Data(body.readBytes(length: body.readableBytes) ?? [])
        } catch {
            throw KilnError(.network, "cannot download \(url): the body is over \(limit >> 20) MiB or was cut off (\(error))")
        }
    }
}
