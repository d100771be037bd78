import Foundation
import KilnModel
import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

/// An image's root filesystem as one folder, for work on a whole tree (a machine disk is made
/// from it): its layers under an overlay, without Kiln's own instance layer and without starting
/// anything. Changes made in the view (a disk's generalisation) land in a throwaway upper
/// folder; the layers are never written. The mount is nodev (as an instance root is).
public enum ImageRootView {
    static let prefix = ".kiln-rootview-"

    /// Runs `body` with the merged root of `image`; the mount and its folder go afterwards, also
    /// on failure. A Kiln that dies meanwhile leaves them to `LeftoverSweep`.
    public static func with<Result>(image: Descriptor, host: InstanceHost, _ body: (String) async throws -> Result) async throws -> Result {
        let (manifest, config) = try host.store.image(image.digest)
        let folder = host.instancesDirectory + "/" + ProcessOwner.temporaryName(prefix)
        let merged = folder + "/merged", upper = folder + "/upper", work = folder + "/work"
        do {
            for path in [folder, merged, upper, work] {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            }
        } catch {
            throw KilnError(.ioFailure, "cannot create \(folder) for the image's root: \(error.localizedDescription)")
        }
        defer { remove(folder) }
        let budget = Overlay.optionLimit - "lowerdir=,upperdir=\(upper),workdir=\(work),\(Overlay.fixedOptions)".utf8.count
        let lowers = try host.layers.folders(for: manifest, config: config, store: host.store, budget: budget).reversed()
        try Overlay.mount(lower: Array(lowers), upper: upper, work: work, at: merged, scratch: folder)
        return try await body(merged)
    }

    /// Unmounts and removes a view's folder (also a dead Kiln's).
    static func remove(_ folder: String) {
        Overlay.unmount(folder + "/merged")
        _ = ContentStore.removeTree(folder)
    }
}
