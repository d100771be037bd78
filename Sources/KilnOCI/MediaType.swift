import Foundation

/// Media types of the OCI image spec, and the Docker schema-2 types accepted when reading.
public enum MediaType {
    public static let imageManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let imageIndex = "application/vnd.oci.image.index.v1+json"
    public static let imageConfig = "application/vnd.oci.image.config.v1+json"
    public static let layerTar = "application/vnd.oci.image.layer.v1.tar"
    public static let layerTarGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let layerTarZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    public static let emptyJSON = "application/vnd.oci.empty.v1+json"

    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let dockerConfig = "application/vnd.docker.container.image.v1+json"
    public static let dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"

    public static func isManifest(_ type: String) -> Bool { type == imageManifest || type == dockerManifest }
    public static func isIndex(_ type: String) -> Bool { type == imageIndex || type == dockerManifestList }
}

extension MediaType {
    /// The media type a manifest names for itself, or what its shape says when it names none
    /// (older Docker and OCI manifests omit the field).
    public static func sniff(_ data: Data) -> String? {
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { return nil }
        if let declared = object["mediaType"] as? String { return declared }
        if object["manifests"] != nil { return imageIndex }
        if object["layers"] != nil { return imageManifest }
        return nil
    }
}
