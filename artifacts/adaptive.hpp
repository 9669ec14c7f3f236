// Adaptive installs, sans-io: which frames of a new payload a device can build from the data it
// already has (its active partition), which byte ranges it must fetch, and the building and
// checking of each frame. Plain classes fed bytes; the agent performs the I/O they ask for.
//
//   Header h = ...;                                  // Reader's HeaderHandler; h.chunk_index set
//   LocalIndexer ix(*h.chunk_index);                 // stream the active partition through it
//   while (n = read(part, buf)) ix.feed(buf.first(n));
//   LocalTable table = ix.finish();
//   Plan plan = plan_adaptive(*h.chunk_index, table, {.artifact_size = N, .data_offset = h.data_offset});
//   if (plan.full_download) -> stream the artifact as today (plan.reason says why)
//   FrameBuilder b(*h.chunk_index, table);
//   for each frame i in order:
//     plan.local[i] ? b.build_local(i, read_partition) : b.decode_fetched(i, bytes of plan.frame_range(i))
//     -> on success write b.frame() at h.chunk_index->frame_payload_offset(i); hash it into the
//        payload SHA-256 and compare with h.payload_sha256 at the end, as today.
//     -> a build_local error (the local data changed since it was indexed) means: fetch that frame.
//
// Trust: the index comes from the signed header (reader.hpp). A block read from the local disk is
// used only if its hash equals the index's block hash (with an index of SHA-256 block hashes, the
// frame's SHA-256 is checked instead: one pass rather than two); a fetched frame only if the
// SHA-256 of its bytes equals the index's frame hash. Whatever the blocks, the installer checks the
// SHA-256 of the whole payload against the signed manifest before it uses it (chunk_index.hpp).
//
// Not thread-safe; one instance per thread. Memory: LocalIndexer keeps 12 bytes per distinct
// wanted block (at most the new payload's block count), FrameBuilder one frame.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "artifacts/chunk_index.hpp"
#include "common/error.hpp"

namespace tern::artifacts {

/// Content-addressed view of local data: for each distinct block hash of the index, the first
/// local block found with that hash. Memory: 12 bytes per distinct block of the new payload (at
/// 1 GiB in 4 KiB blocks: 3 MiB), plus 256 KiB of buckets; nothing grows while indexing.
struct LocalTable {
  static constexpr std::uint32_t none = UINT32_MAX;
  std::uint32_t block_size = 0;
  BlockHashKind kind = BlockHashKind::xxh3;
  std::vector<std::uint64_t> hashes;   ///< the index's distinct block hashes, sorted
  std::vector<std::uint32_t> where;    ///< per hash: the first local block number holding it, or none
  std::vector<std::uint32_t> buckets;  ///< hashes with top 16 bits k: [buckets[k], buckets[k+1])
  std::uint64_t bytes_indexed = 0;     ///< local bytes hashed

  /// Position of `hash` in `hashes`, or SIZE_MAX.
  std::size_t slot(std::uint64_t hash) const;
  /// Byte offset of a local block with this hash.
  std::optional<std::uint64_t> find(std::uint64_t hash) const;
  /// Distinct wanted blocks found locally.
  std::size_t found() const;
};

/// Streams local data (a partition or image file) and hashes it block by block at the index's
/// block size and hash kind, noting where each wanted block first appears.
class LocalIndexer {
 public:
  explicit LocalIndexer(const ChunkIndex& wanted);
  /// The next bytes of the local data, any chunking.
  void feed(std::span<const std::uint8_t> bytes);
  /// A trailing partial block is ignored.
  LocalTable finish();

 private:
  void add_block(std::span<const std::uint8_t> block);
  std::vector<std::uint8_t> partial_;
  LocalTable table_;
  std::uint64_t block_number_ = 0;
  BlockHasher hasher_;
};

/// Reads and indexes a file or block device (at most max_bytes of it) with a 1 MiB buffer.
/// Errors: Errc::io naming the path (cannot open, read error).
Result<LocalTable> index_local_file(const std::filesystem::path& path, const ChunkIndex& index,
                                    std::uint64_t max_bytes = UINT64_MAX);

/// A span of artifact bytes, [offset, offset + length).
struct ByteRange {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  bool operator==(const ByteRange&) const = default;
};

struct PlanOptions {
  std::uint64_t artifact_size = 0;  ///< bytes of the whole artifact (the fraction's denominator)
  std::uint64_t data_offset = 0;    ///< Header::data_offset
  /// Two fetched ranges closer than this are fetched as one (the bytes between come along):
  /// fewer requests for a few wasted bytes.
  std::uint64_t coalesce_gap = 0;
  /// Above this fraction of the artifact, the plan says: download it whole.
  double full_threshold = 0.9;
};

struct Plan {
  std::vector<bool> local;        ///< per frame: build from local data (else fetch)
  std::vector<ByteRange> ranges;  ///< coalesced, in artifact order, to fetch
  std::uint64_t frames_local = 0;
  std::uint64_t frames_fetched = 0;
  std::uint64_t bytes_reused = 0;    ///< uncompressed payload bytes built locally
  std::uint64_t prefix_bytes = 0;    ///< artifact bytes before frame 0 (read for the header anyway)
  std::uint64_t bytes_to_fetch = 0;  ///< prefix_bytes + the ranges
  std::uint64_t artifact_size = 0;
  double fetch_fraction = 1.0;  ///< bytes_to_fetch / artifact_size
  bool full_download = false;   ///< do not bother: stream the whole artifact
  std::string reason;           ///< why full_download

  /// Artifact bytes of frame i's compressed data (offset from data_offset + the index).
  ByteRange frame_range(const ChunkIndex& index, std::size_t i) const;
  std::uint64_t data_offset = 0;
};

/// Decides, per frame, local or fetch: local when every block of the frame is in `table`.
Plan plan_adaptive(const ChunkIndex& index, const LocalTable& table, const PlanOptions& options);

/// The plan when there is no index (or no usable local data): everything is fetched.
Plan plan_full(std::uint64_t artifact_size, std::string reason);

/// Builds and checks frames, one at a time, into frame().
class FrameBuilder {
 public:
  /// Reads `out.size()` local bytes at `offset`. Errors pass through build_local().
  using LocalReader = std::function<Result<void>(std::uint64_t offset, std::span<std::uint8_t> out)>;

  FrameBuilder(const ChunkIndex& index, const LocalTable& table);
  ~FrameBuilder();
  FrameBuilder(const FrameBuilder&) = delete;
  FrameBuilder& operator=(const FrameBuilder&) = delete;

  /// Frame i from local data: each block found in the table, runs of blocks that lie one after
  /// the other locally read with one call, each block checked against its XXH3 block hash (or,
  /// for an index of SHA-256 block hashes, the frame against its SHA-256). Errors:
  /// ArtifactErrc::manifest_mismatch naming the block or frame whose local bytes differ from the
  /// index (fetch the frame instead), ArtifactErrc::malformed when a block is not in the table,
  /// and `read`'s errors.
  Result<void> build_local(std::size_t i, const LocalReader& read);
  /// Frame i from its fetched compressed bytes (exactly Plan::frame_range(i)): decompressed (zstd)
  /// or taken as is (none), then checked against its SHA-256. Errors: ArtifactErrc::malformed
  /// (corrupt, or not exactly one frame of the right length), ArtifactErrc::manifest_mismatch.
  Result<void> decode_fetched(std::size_t i, std::span<const std::uint8_t> compressed);
  /// The last frame built or decoded: its uncompressed payload bytes.
  std::span<const std::uint8_t> frame() const { return frame_; }

 private:
  Result<void> check_frame(std::size_t i);
  const ChunkIndex& index_;
  const LocalTable& table_;
  BlockHasher hasher_;
  std::vector<std::uint8_t> frame_;
  struct Zstd;
  std::unique_ptr<Zstd> zstd_;
};

/// What apply_plan() did.
struct ApplyStats {
  std::uint64_t frames_local = 0;      ///< built from local data
  std::uint64_t frames_fetched = 0;    ///< fetched as planned
  std::uint64_t frames_refetched = 0;  ///< planned local, but the local data no longer matched
  std::uint64_t bytes_fetched = 0;     ///< compressed bytes asked of `fetch`
  std::uint64_t bytes_reused = 0;      ///< payload bytes built locally
};

/// Runs a plan synchronously with I/O callbacks (the reference loop for an installer, and what
/// `tern-artifact plan --build` runs): every frame in payload order, built locally or fetched and
/// decoded (a local frame that fails its checks is fetched instead), handed to `write` with its
/// payload offset, and the whole payload's SHA-256 compared with `payload_sha256` (hex, from the
/// manifest) at the end. `fetch` gets exactly Plan::frame_range(i) and returns those bytes.
/// Errors: ArtifactErrc::manifest_mismatch when the whole payload's SHA-256 differs; a fetched
/// frame that fails decode_fetched(); the callbacks' errors.
using RangeFetcher = std::function<Result<std::vector<std::uint8_t>>(std::size_t frame, ByteRange range)>;
using PayloadWriter =
    std::function<Result<void>(std::uint64_t payload_offset, std::span<const std::uint8_t> bytes)>;
Result<ApplyStats> apply_plan(const ChunkIndex& index, const LocalTable& table, const Plan& plan,
                              const std::string& payload_sha256, const FrameBuilder::LocalReader& read_local,
                              const RangeFetcher& fetch, const PayloadWriter& write);

}  // namespace tern::artifacts
