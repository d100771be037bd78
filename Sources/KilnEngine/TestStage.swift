import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry
import KilnTOE
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// TEST: the components' test phases, container-host-test and Kiln's suites (see
/// `RecipeBuilder.test`), unless the pipeline switched image tests off.
extension PipelineRun {
    /// Whether the image passed (or was not tested); false when it FAILED.
    func testStage(_ prepared: Prepared, built: (image: Descriptor, parent: Descriptor, builder: RecipeBuilder), image: ImageRun)
        async throws -> Bool
    {
        let pipeline = prepared.selection.pipeline
        guard pipeline.imageTestsConfiguration?.imageTestsEnabled ?? true else { return true }
        try image.enter(.testing)
        let junit = image.record.logDirectory + "/test/junit.xml"
        do {
            let parentLayers = try transfer.store.image(built.parent.digest).manifest.layers.count
            let usages = try await image.timed(.test) {
                try await built.builder.test(
                    image: built.image, suites: pipeline.kilnTests ?? KilnTests(), parentLayers: parentLayers, imageLabel: image.record.arn,
                    hostTests: prepared.recipe.imageType == .docker,
                    keepOnFailure: prepared.keepOnFailure
                )
            }
            for usage in usages { image.charge("test", usage) }
            image.record.testResults = junit
            return true
        } catch let failure as RecipeBuilder.StepFailure {
            if FileManager.default.fileExists(atPath: junit) { image.record.testResults = junit }
            _ = try image.fail(.test, step: failure.step, log: failure.log, failure.reason)
            return false
        }
    }
}
