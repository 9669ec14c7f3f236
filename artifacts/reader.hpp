// Streaming reader for Mender artifacts, format version 3 (see DESIGN.md).
//
// Push-based: feed() takes the bytes in whatever chunks they arrive (1 byte to megabytes), never
// seeks and never holds the payload: its uncompressed bytes go to the PayloadSink as they are
// decompressed, while their SHA-256 is computed. Memory stays bounded whatever the payload size
// (small members such as the manifest and header.tar are held, with limits).
//
//   Reader reader(options, on_header, on_payload);
//   while (auto n = read(buf)) if (auto r = reader.feed(buf.first(n)); !r) fail(r.error());
//   if (auto r = reader.finish(); !r) fail(r.error());   // payload hash, completeness
//
// Checks, each failing with an error that names the problem: the version member, member order,
// every manifest entry present and matching (version and header bytes as they arrive, the payload
// at its end), the signature over the manifest (required when a key is configured), device type
// compatibility, artifact_depends against the device's provides, payload larger than a limit,
// malformed tar/JSON, truncated stream, trailing garbage.
//
// The HeaderHandler is called once, after header.tar is verified and the payload file's tar header
// is read (so name and size are known) and before any payload byte reaches the sink: the agent
// can refuse there (e.g. the payload does not fit the partition), and finds the chunk index there
// (Header::chunk_index) to plan an adaptive install (adaptive.hpp). A malformed index is refused
// with ArtifactErrc::malformed ("headers/0000/meta-data: chunk index: ..."). An error returned by the handler
// or the sink stops the reader and is returned by feed() unchanged.
//
// Errors are sticky: after one, feed() and finish() return it again. Not thread-safe.
#pragma once

#include "artifacts/chunk_index.hpp"
#include "artifacts/compress.hpp"
#include "common/error.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace tern::artifacts {

/// Error codes of this module (category "tern-artifact").
enum class ArtifactErrc {
  malformed = 1,       ///< not a valid artifact (tar, JSON, member order, missing member)
  unsupported,         ///< a valid artifact Tern cannot install (format version, payload type, count)
  manifest_mismatch,   ///< a member's checksum differs from the manifest
  signature,           ///< unsigned when a key is required, or the signature does not verify
  incompatible,        ///< device type or artifact_depends do not match this device
  too_large,           ///< payload larger than the configured limit
  truncated,           ///< the stream ended early
};
const std::error_category& artifact_category() noexcept;
inline std::error_code make_error_code(ArtifactErrc e) noexcept { return {static_cast<int>(e), artifact_category()}; }

struct Header {
  std::string artifact_name;
  std::string artifact_group;                        ///< provides.artifact_group, may be empty
  std::vector<std::string> device_types;             ///< artifact_depends.device_type
  std::vector<std::string> depends_artifact_names;   ///< artifact_depends.artifact_name, may be empty
  std::vector<std::string> depends_groups;           ///< artifact_depends.artifact_group, may be empty
  std::map<std::string, std::string> provides;       ///< type-info artifact_provides
  std::map<std::string, std::vector<std::string>> depends;  ///< type-info artifact_depends
  std::vector<std::string> clears_provides;          ///< type-info clears_artifact_provides
  std::string payload_type;                          ///< "rootfs-image", or an update module's type
  std::string payload_name;                          ///< the (first) file inside data/0000.tar
  std::uint64_t payload_size = 0;                    ///< its uncompressed size
  std::string payload_sha256;                        ///< expected, from the manifest
  /// Update module payloads (any type but rootfs-image) carry any number of files (zero too):
  /// their names, from the manifest (sorted). A rootfs-image has exactly one file.
  std::vector<std::string> files;
  std::string header_info_json, type_info_json;  ///< header-info and headers/0000/type-info, verbatim
  bool is_rootfs() const { return payload_type == "rootfs-image"; }
  Compression compression = Compression::none;       ///< of header.tar and data/0000.tar
  std::string meta_data_json;  ///< headers/0000/meta-data, may be empty; without Tern's chunk index
                               ///< when it stands first (as the writer puts it): see chunk_index
  std::vector<std::pair<std::string, std::string>> scripts;  ///< state scripts: name, content
  bool signed_manifest = false;                      ///< manifest.sig present
  bool signature_verified = false;                   ///< and verified with the configured key
  /// The chunk index from meta-data (chunk_index.hpp), checked against the payload's size and the
  /// data member's compression and size; null when the artifact has none. Covered by the manifest
  /// and its signature like the rest of header.tar. Shared: copying a Header does not copy it.
  std::shared_ptr<const ChunkIndex> chunk_index;
  std::uint64_t data_offset = 0;  ///< artifact byte where data/0000.tar.*'s content starts
  std::uint64_t data_size = 0;    ///< its size (compressed)
};

/// A point an interrupted read can resume from: the data member's decoder is exactly at a
/// boundary (a zstd frame, a deflate block of gzip, an xz block; see Decompressor::save_state),
/// inside the payload file. Saved by the agent with the artifact's prefix (the bytes before the
/// data member's content); a Reader rebuilt with resume() from both accepts the artifact bytes from
/// `offset` on and ends with the same checks and hashes as a straight read.
struct Checkpoint {
  std::uint64_t offset = 0;          ///< artifact byte after the boundary: feed from here
  std::uint64_t prefix_size = 0;     ///< bytes of the prefix (where the data member's content starts)
  std::string prefix_sha256;         ///< hex SHA-256 of the prefix
  std::string payload_name;          ///< the payload file inside data/0000.tar
  std::uint64_t payload_size = 0;    ///< its size
  std::uint64_t payload_bytes = 0;   ///< payload bytes emitted before `offset` (written by the sink)
  std::string payload_hash;          ///< Sha256::save_state() of those bytes
  std::string artifact_hash;         ///< Sha256::save_state() of artifact bytes [0, offset), or empty
  /// Decompressor::save_state() at the boundary: "zstd", "none", or gzip's window and bit position
  /// (up to 44 KiB of text), xz's block sizes. Empty in checkpoints saved before it existed: zstd.
  std::string codec_state;

  /// Line-based text ending with a SHA-256 over the lines before it, so a torn or edited file is
  /// refused by parse().
  std::string serialize() const;
  /// Errors: ArtifactErrc::malformed naming the bad line, key or value, or the check mismatch.
  static Result<Checkpoint> parse(std::string_view text);
};

struct ReaderOptions {
  /// PEM public key; when set, an artifact without a valid manifest.sig is refused.
  std::optional<std::string> verify_key_pem;
  /// This device's type; when set, it must be in the artifact's device types.
  std::optional<std::string> device_type;
  /// This device's provides (artifact_name, artifact_group, rootfs-image.version, ...); when set,
  /// the artifact's depends must be satisfied by them.
  std::optional<std::map<std::string, std::string>> device_provides;
  /// Largest uncompressed payload accepted.
  std::uint64_t max_payload_size = UINT64_MAX;
  /// Also hash every artifact byte (artifact_sha256(), and Checkpoint::artifact_hash).
  bool hash_artifact = false;
};

class Reader {
 public:
  using HeaderHandler = std::function<Result<void>(const Header&)>;
  using PayloadSink = std::function<Result<void>(std::span<const std::uint8_t>)>;

  Reader(ReaderOptions options, HeaderHandler on_header, PayloadSink on_payload);
  ~Reader();
  Reader(Reader&&) noexcept;
  Reader& operator=(Reader&&) noexcept;

  /// Called once with the artifact's prefix: every byte before the data member's content
  /// (version, manifest, manifest.sig, header.tar.*, the data member's tar header), when it ends.
  /// An error from it only turns the checkpoints off (they are an optimisation; the caller logs
  /// why): the read goes on.
  using PrefixHandler = std::function<Result<void>(std::span<const std::uint8_t>)>;
  /// Called at a decoder boundary inside the payload, after the payload bytes before it went
  /// to the PayloadSink. Errors stop the reader like the sink's.
  using CheckpointHandler = std::function<Result<void>(const Checkpoint&)>;

  /// Called at the start of each file of data/0000.tar with its name and size, before its bytes
  /// reach the PayloadSink (for the first, after the HeaderHandler); an error stops the reader like
  /// the sink's. Update module payloads have several files: this is where one ends and the next
  /// begins. Call before the first feed().
  using FileHandler = std::function<Result<void>(const std::string& name, std::uint64_t size)>;
  void set_file_handler(FileHandler on_file);

  /// Asks for checkpoints at most every `every` payload bytes (at the first boundary past that).
  /// Call before the first feed(). zstd data members with several frames, gzip (deflate blocks
  /// end every few tens of KiB), xz with several blocks and uncompressed ones produce them; an xz
  /// stream of one block does not (a log line says so once 2 × `every` payload bytes passed without a
  /// boundary). A prefix over 16 MiB (a huge header) disables them.
  void enable_checkpoints(std::uint64_t every, PrefixHandler on_prefix, CheckpointHandler on_checkpoint);

  /// Rebuilds the state of `checkpoint` instead of reading from byte 0: feeds `prefix` (which
  /// verifies version, manifest, signature and header again, and calls the HeaderHandler), then
  /// restores the decoder, tar and hash state. The next feed() takes the artifact from
  /// checkpoint.offset. Call on a fresh Reader. Errors (the Reader is then unusable):
  /// ArtifactErrc::malformed when the prefix or checkpoint do not fit together or are
  /// inconsistent, and any error the prefix itself raises.
  Result<void> resume(std::span<const std::uint8_t> prefix, const Checkpoint& checkpoint);

  /// Consumes `bytes`. Errors as listed above; sticky.
  Result<void> feed(std::span<const std::uint8_t> bytes);
  /// End of input: the artifact must be complete and the payload's SHA-256 must match.
  Result<void> finish();

  /// The header once it has been reported to the HeaderHandler, else nullptr.
  const Header* header() const;
  std::uint64_t bytes_consumed() const;
  std::uint64_t payload_bytes() const;
  /// With ReaderOptions::hash_artifact, after a successful finish(): hex SHA-256 of the whole
  /// artifact (including bytes before a resume's checkpoint). Else empty.
  std::string artifact_sha256() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Reads and verifies a whole artifact file; the payload is hashed and discarded (or handed to
/// `sink` if given). Returns the header.
Result<Header> read_file(const std::filesystem::path& path, ReaderOptions options,
                         Reader::PayloadSink sink = nullptr);

/// Reads an artifact file only up to its header (the HeaderHandler's point: signature, manifest,
/// header.tar and chunk index verified; no payload byte read past the data member's first frame).
Result<Header> read_header(const std::filesystem::path& path, ReaderOptions options);

}  // namespace tern::artifacts

template <>
struct std::is_error_code_enum<tern::artifacts::ArtifactErrc> : std::true_type {};
