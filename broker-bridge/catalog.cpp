#include "broker-bridge/catalog.hpp"

#include "artifacts/crypto.hpp"
#include "artifacts/reader.hpp"
#include "common/log.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <set>

namespace tern::bridge {

namespace fs = std::filesystem;

namespace {

std::int64_t mtime_of(const fs::path& p, std::error_code& ec) {
  auto t = fs::last_write_time(p, ec);
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

}  // namespace

Result<ArtifactRecord> read_artifact(const fs::path& dir, const std::string& file,
                                     const std::optional<std::string>& verify_key_pem) {
  const fs::path path = dir / file;
  const std::string what = "reading artifact " + path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error::from_errno(what, errno);

  artifacts::ReaderOptions options;
  options.verify_key_pem = verify_key_pem;
  artifacts::Reader reader(std::move(options), [](const artifacts::Header&) -> Result<void> { return {}; },
                           [](std::span<const std::uint8_t>) -> Result<void> { return {}; });
  // One pass: the reader verifies the artifact while the file's own SHA-256 is computed.
  artifacts::Sha256 file_hash;
  std::uint64_t size = 0;
  std::vector<std::uint8_t> buf(256 * 1024);
  while (in) {
    in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    auto n = static_cast<std::size_t>(in.gcount());
    if (n == 0) break;
    size += n;
    file_hash.update({buf.data(), n});
    if (auto r = reader.feed({buf.data(), n}); !r) return r.error().context(what);
  }
  if (in.bad()) return Error::from_errno(what, errno);
  if (auto r = reader.finish(); !r) return r.error().context(what);
  const artifacts::Header* h = reader.header();
  if (!h) return fail(Errc::internal, what + ": no header after a complete read");

  std::error_code ec;
  ArtifactRecord rec;
  rec.name = h->artifact_name;
  rec.file = file;
  rec.size = size;
  rec.sha256 = file_hash.hex_final();
  rec.device_types = h->device_types;
  rec.is_signed = h->signature_verified;
  rec.mtime = mtime_of(path, ec);
  return rec;
}

Result<ScanReport> scan_artifacts(Store& store, const fs::path& dir,
                                  const std::optional<std::string>& verify_key_pem) {
  ScanReport report;
  std::error_code ec;
  std::vector<std::string> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    auto name = it->path().filename().string();
    if (name.ends_with(".mender")) files.push_back(name);
  }
  if (ec) return fail(Errc::io, "listing artifact directory " + dir.string() + ": " + ec.message());
  std::sort(files.begin(), files.end());

  auto known = store.artifacts();
  if (!known) return known.error();
  std::set<std::string> present;
  for (auto& file : files) {
    // Unchanged files (same size and mtime as when read) are not read again.
    auto old = std::find_if(known->begin(), known->end(), [&](auto& a) { return a.file == file; });
    if (old != known->end()) {
      std::error_code e1, e2;
      auto size = fs::file_size(dir / file, e1);
      auto mtime = mtime_of(dir / file, e2);
      if (!e1 && !e2 && size == old->size && mtime == old->mtime) {
        present.insert(old->name);
        continue;
      }
    }
    auto rec = read_artifact(dir, file, verify_key_pem);
    if (!rec) {
      log::warn("artifact catalog: ", rec.error().message());
      report.errors.push_back(rec.error().message());
      continue;
    }
    if (auto r = store.put_artifact(*rec); !r) return r.error();
    present.insert(rec->name);
    report.added.push_back(rec->name);
    log::info("artifact catalog: ", rec->name, " (", rec->file, ", ", rec->size, " bytes, ",
              rec->is_signed ? "signed" : "unsigned", ")");
  }
  // Entries whose file disappeared (or now holds another artifact name) leave the catalog.
  for (auto& a : *known) {
    if (present.count(a.name)) continue;
    if (auto r = store.remove_artifact(a.name); !r) return r.error();
    report.removed.push_back(a.name);
  }
  return report;
}

}  // namespace tern::bridge
