// tern-artifact: write, read, validate and sign Mender v3 artifacts, with mender-artifact's flags
// where they overlap.
#include "artifacts/adaptive.hpp"
#include "artifacts/crypto.hpp"
#include "artifacts/reader.hpp"
#include "artifacts/writer.hpp"
#include "common/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

namespace art = tern::artifacts;

namespace {

const char* usage =
    "usage:\n"
    "  tern-artifact write rootfs-image -f FILE -t DEVICE_TYPE [-t ...] -n NAME -o OUT\n"
    "        [--compression zstd|gzip|lzma|none] [-k PRIVATE_KEY] [-p KEY:VALUE]... [-d KEY:VALUE]...\n"
    "        [-N DEPENDS_ARTIFACT_NAME]... [-g PROVIDES_GROUP] [-G DEPENDS_GROUP]... [-s SCRIPT]...\n"
    "        [--software-version VERSION] [--clears-provides NAME]... [--frame-size BYTES]\n"
    "        [--no-chunk-index] [--chunk-block-size BYTES] [--chunk-block-hash xxh3|sha256]\n"
    "  tern-artifact write module-image -T TYPE [-f FILE]... -t DEVICE_TYPE [-t ...] -n NAME -o OUT\n"
    "        [-m META_DATA.json] [--compression zstd|gzip|lzma|none] [-k PRIVATE_KEY] [-p KEY:VALUE]...\n"
    "        [-d KEY:VALUE]... [-N NAME]... [-g GROUP] [-G GROUP]... [-s SCRIPT]... [--software-version V]\n"
    "        [--clears-provides NAME]...   (an update module's artifact, as mender-artifact writes it)\n"
    "  tern-artifact read FILE [-k PUBLIC_KEY]\n"
    "  tern-artifact validate FILE [-k PUBLIC_KEY]\n"
    "  tern-artifact sign FILE -k PRIVATE_KEY [-o OUT]\n"
    "  tern-artifact plan --local OLD_IMAGE NEW.mender [-k PUBLIC_KEY] [--gap BYTES] [--threshold FRACTION]\n"
    "        [--build OUT]   (what an adaptive install of NEW.mender over OLD_IMAGE fetches; --build runs it,\n"
    "                         fetching frames from the artifact file, and checks the result's SHA-256)\n";

int die(const std::string& msg) {
  std::cerr << "tern-artifact: " << msg << "\n";
  return 1;
}

std::optional<std::string> slurp(const std::string& path) {
  auto text = tern::read_file(path);
  if (!text) return std::nullopt;
  return std::move(*text);
}

bool split_kv(const std::string& s, std::string& k, std::string& v) {
  auto c = s.find(':');
  if (c == std::string::npos || c == 0) return false;
  k = s.substr(0, c);
  v = s.substr(c + 1);
  return true;
}

std::optional<std::uint64_t> number(const std::string& s) {
  if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::stoull(s);
}

// A progress bar on a terminal, nothing otherwise.
struct Progress {
  bool tty = ::isatty(STDERR_FILENO);
  int last = -1;
  void operator()(std::uint64_t done, std::uint64_t total) {
    if (!tty || total == 0) return;
    int pct = static_cast<int>(done * 100 / total);
    if (pct == last) return;
    last = pct;
    int bars = pct / 2;
    std::fprintf(stderr, "\r[%.*s%*s] %3d%%", bars, "##################################################", 50 - bars,
                 "", pct);
    if (done == total) std::fprintf(stderr, "\n");
  }
};

int cmd_write(int argc, char** argv) {
  const bool module = argc >= 3 && std::strcmp(argv[2], "module-image") == 0;
  if (argc < 3 || (!module && std::strcmp(argv[2], "rootfs-image") != 0))
    return die("write: 'rootfs-image' or 'module-image'\n" + std::string(usage));
  art::WriterOptions o;
  std::string out;
  std::vector<std::string> clears;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--no-chunk-index") {
      o.chunk_index = false;
      continue;
    }
    auto next = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc) return std::nullopt;
      return std::string(argv[++i]);
    };
    auto v = next();
    if (!v) return die("write: " + a + " needs a value");
    std::string k, val;
    if ((a == "-f" || a == "--file") && module) o.files.emplace_back(*v);
    else if ((a == "-T" || a == "--type") && module) o.payload_type = *v;
    else if ((a == "-m" || a == "--meta-data") && module) o.meta_data = *v;
    else if (a == "-f" || a == "--file") o.payload = *v;
    else if (a == "-t" || a == "--device-type") o.device_types.push_back(*v);
    else if (a == "-n" || a == "--artifact-name") o.artifact_name = *v;
    else if (a == "-o" || a == "--output-path") out = *v;
    else if (a == "--compression") {
      auto c = art::parse_compression(*v);
      if (!c) return die(c.error().message());
      o.compression = *c;
    } else if (a == "-k" || a == "--key") {
      auto key = slurp(*v);
      if (!key) return die("cannot read key " + *v);
      o.signing_key_pem = *key;
    } else if (a == "-p" || a == "--provides") {
      if (!split_kv(*v, k, val)) return die("-p wants KEY:VALUE, got '" + *v + "'");
      o.provides[k] = val;
    } else if (a == "-d" || a == "--depends") {
      if (!split_kv(*v, k, val)) return die("-d wants KEY:VALUE, got '" + *v + "'");
      o.depends[k] = val;
    } else if (a == "-N" || a == "--artifact-name-depends") o.depends_artifact_names.push_back(*v);
    else if (a == "-g" || a == "--provides-group") o.artifact_group = *v;
    else if (a == "-G" || a == "--depends-groups") o.depends_groups.push_back(*v);
    else if (a == "-s" || a == "--script") o.scripts.push_back(*v);
    else if (a == "--software-version") o.software_version = *v;
    else if (a == "--clears-provides") clears.push_back(*v);
    else if (a == "--chunk-block-hash") {
      if (*v != "xxh3" && *v != "sha256") return die("--chunk-block-hash wants xxh3 or sha256, got '" + *v + "'");
      o.chunk_block_hash = *v == "xxh3" ? art::BlockHashKind::xxh3 : art::BlockHashKind::sha256;
    } else if (a == "--frame-size" || a == "--chunk-block-size") {
      auto n = number(*v);
      if (!n || *n == 0) return die(a + " wants a positive number of bytes, got '" + *v + "'");
      if (a == "--frame-size") o.frame_size = *n;
      else o.chunk_block_size = static_cast<std::uint32_t>(*n);
    }
    else return die("write: unknown flag '" + a + "'\n" + usage);
  }
  if (!clears.empty()) o.clears_provides = clears;
  if (module) {
    if (o.payload_type.empty() || out.empty())
      return die("write: module-image needs -T TYPE and -o OUT\n" + std::string(usage));
    if (auto r = art::write_module_artifact(o, out); !r) return die(r.error().message());
    return 0;
  }
  if (o.payload.empty() || out.empty()) return die("write: -f FILE and -o OUT are required\n" + std::string(usage));
  Progress bar;
  o.progress = [&](std::uint64_t d, std::uint64_t t) { bar(d, t); };
  if (auto r = art::write_rootfs_artifact(o, out); !r) return die(r.error().message());
  return 0;
}

std::optional<std::string> key_arg(int argc, char** argv, int from, std::string& file) {
  std::optional<std::string> key;
  for (int i = from; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "-k" || a == "--key") && i + 1 < argc) key = argv[++i];
    else if (file.empty()) file = a;
  }
  return key;
}

int cmd_read(int argc, char** argv, bool print) {
  std::string file;
  art::ReaderOptions ro;
  if (auto k = key_arg(argc, argv, 2, file)) {
    auto pem = slurp(*k);
    if (!pem) return die("cannot read key " + *k);
    ro.verify_key_pem = *pem;
  }
  if (file.empty()) return die(usage);
  auto h = art::read_file(file, ro);
  if (!h) return die(h.error().message());
  if (!print) {
    std::cout << "Artifact file '" << file << "' validated successfully\n";
    return 0;
  }
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (auto& x : v) s += (s.empty() ? "" : " ") + x;
    return "[" + s + "]";
  };
  std::cout << "Mender artifact:\n"
            << "  Name: " << h->artifact_name << "\n"
            << "  Format: mender\n  Version: 3\n"
            << "  Signature: "
            << (!h->signed_manifest ? "no signature"
                                    : h->signature_verified ? "signed and verified correctly"
                                                            : "signed but no key for verification provided")
            << "\n"
            << "  Compatible devices: " << list(h->device_types) << "\n"
            << "  Provides group: " << h->artifact_group << "\n"
            << "  Depends on one of artifact(s): " << list(h->depends_artifact_names) << "\n"
            << "  Depends on one of group(s): " << list(h->depends_groups) << "\n"
            << "  State scripts:\n";
  for (auto& [name, content] : h->scripts) std::cout << "    " << name << "\n";
  std::cout << "\nUpdates:\n    0:\n    Type:   " << h->payload_type << "\n    Provides:\n";
  for (auto& [k, v] : h->provides) std::cout << "\t" << k << ": " << v << "\n";
  std::cout << "    Depends:" << (h->depends.empty() ? " Nothing" : "") << "\n";
  for (auto& [k, v] : h->depends) std::cout << "\t" << k << ": " << list(v) << "\n";
  std::cout << "    Clears Provides: " << list(h->clears_provides) << "\n"
            << "    Metadata: "
            << (h->meta_data_json.empty()          ? std::string("Nothing")
                : h->meta_data_json.size() <= 200 ? h->meta_data_json
                                                  : h->meta_data_json.substr(0, 200) + "... (" +
                                                        std::to_string(h->meta_data_json.size()) + " bytes)")
            << "\n";
  if (const auto* x = h->chunk_index.get())
    std::cout << "    Chunk index: " << x->frames.size() << " frames of " << x->frame_size << " bytes, "
              << x->block_hashes.size() << " blocks of " << x->block_size << " bytes, "
              << (x->block_hash_kind == art::BlockHashKind::xxh3 ? "XXH3" : "SHA-256") << " block hashes\n";
  if (!h->is_rootfs()) {
    std::cout << "    Files:" << (h->files.empty() ? " none" : "") << "\n";
    for (auto& f : h->files) std::cout << "      name:     " << f << "\n";
    std::cout << "    Compression: " << art::to_string(h->compression) << "\n";
    return 0;
  }
  std::cout
            << "    Files:\n      name:     " << h->payload_name << "\n      size:     " << h->payload_size
            << "\n      checksum: " << h->payload_sha256 << "\n    Compression: " << art::to_string(h->compression)
            << "\n";
  return 0;
}

int cmd_sign(int argc, char** argv) {
  std::string file, out, keyfile;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "-k" || a == "--key") && i + 1 < argc) keyfile = argv[++i];
    else if ((a == "-o" || a == "--output-path") && i + 1 < argc) out = argv[++i];
    else if (file.empty()) file = a;
    else return die(usage);
  }
  if (file.empty() || keyfile.empty()) return die(usage);
  auto key = slurp(keyfile);
  if (!key) return die("cannot read key " + keyfile);
  if (auto r = art::sign_artifact(file, *key, out.empty() ? file : out); !r) return die(r.error().message());
  return 0;
}

std::string mib(std::uint64_t n) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", double(n) / (1 << 20));
  return b;
}

// Reads `out.size()` bytes at `offset` of an open file.
tern::Result<void> pread_all(int fd, const std::string& what, std::uint64_t offset, std::span<std::uint8_t> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return tern::Error::from_errno("reading " + what, errno);
    if (n == 0) return tern::fail(tern::Errc::io, "reading " + what + ": ends before byte " + std::to_string(offset + out.size()));
    done += static_cast<std::size_t>(n);
  }
  return {};
}

int cmd_plan(int argc, char** argv) {
  std::string local, file, build, keyfile;
  art::PlanOptions po;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--local") local = value();
    else if (a == "-k" || a == "--key") keyfile = value();
    else if (a == "--build") build = value();
    else if (a == "--gap") {
      auto n = number(value());
      if (!n) return die("plan: --gap wants a number of bytes");
      po.coalesce_gap = *n;
    } else if (a == "--threshold") {
      auto v = value();
      char* end = nullptr;
      po.full_threshold = std::strtod(v.c_str(), &end);
      if (v.empty() || *end || po.full_threshold <= 0 || po.full_threshold > 1)
        return die("plan: --threshold wants a fraction in (0, 1], got '" + v + "'");
    } else if (file.empty() && !a.starts_with("-")) file = a;
    else return die("plan: unexpected '" + a + "'\n" + usage);
  }
  if (local.empty() || file.empty()) return die("plan: --local OLD_IMAGE and NEW.mender are required\n" + std::string(usage));
  art::ReaderOptions ro;
  if (!keyfile.empty()) {
    auto pem = slurp(keyfile);
    if (!pem) return die("cannot read key " + keyfile);
    ro.verify_key_pem = *pem;
  }
  auto h = art::read_header(file, ro);
  if (!h) return die(h.error().message());
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return die("cannot stat " + file);
  po.artifact_size = static_cast<std::uint64_t>(st.st_size);
  po.data_offset = h->data_offset;

  art::Plan plan;
  std::optional<art::LocalTable> table;
  const art::ChunkIndex* x = h->chunk_index.get();
  if (!x) {
    plan = art::plan_full(po.artifact_size, "the artifact has no chunk index");
  } else {
    std::cout << "chunk index: " << x->frames.size() << " frames of " << x->frame_size << " bytes, "
              << x->block_size << "-byte blocks, " << x->block_hashes.size() << " block hashes\n";
    auto t = art::index_local_file(local, *x);
    if (!t) {
      plan = art::plan_full(po.artifact_size, "no usable local data: " + t.error().message());
    } else {
      table = std::move(*t);
      std::cout << "local data: " << local << ", " << mib(table->bytes_indexed) << " indexed, "
                << table->found() << " distinct wanted blocks found\n";
      plan = art::plan_adaptive(*x, *table, po);
    }
  }
  std::cout << "frames built locally: " << plan.frames_local << " (" << mib(plan.bytes_reused) << ")\n"
            << "frames fetched: " << plan.frames_fetched << " in " << plan.ranges.size() << " ranges\n"
            << "header and index: " << plan.prefix_bytes << " bytes\n"
            << "bytes to fetch: " << plan.bytes_to_fetch << " of " << plan.artifact_size << " (";
  std::printf("%.2f%%)\n", plan.fetch_fraction * 100);
  std::fflush(stdout);
  std::cout << "decision: " << (plan.full_download ? "full download: " + plan.reason : std::string("adaptive")) << "\n";
  if (build.empty()) return 0;
  if (!x || !table) return die("plan: --build needs an index and local data");

  // Run the plan: local frames from the old image, the others "fetched" from the artifact file.
  int lfd = ::open(local.c_str(), O_RDONLY | O_CLOEXEC);
  int afd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  int ofd = ::open(build.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (lfd < 0 || afd < 0 || ofd < 0) return die("plan: cannot open the local image, the artifact or " + build);
  auto read_local = [&](std::uint64_t off, std::span<std::uint8_t> out) { return pread_all(lfd, local, off, out); };
  auto fetch = [&](std::size_t, art::ByteRange r) -> tern::Result<std::vector<std::uint8_t>> {
    std::vector<std::uint8_t> b(r.length);
    if (auto e = pread_all(afd, file, r.offset, b); !e) return e.error();
    return b;
  };
  auto write = [&](std::uint64_t off, std::span<const std::uint8_t> b) -> tern::Result<void> {
    if (::pwrite(ofd, b.data(), b.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(b.size()))
      return tern::Error::from_errno("writing " + build, errno);
    return {};
  };
  auto applied = art::apply_plan(*x, *table, plan, h->payload_sha256, read_local, fetch, write);
  ::close(lfd);
  ::close(afd);
  if (::close(ofd) != 0 && applied) return die("closing " + build);
  if (!applied) return die("plan --build: " + applied.error().message());
  std::cout << "built " << build << ": " << applied->frames_local << " frames local, " << applied->frames_fetched
            << " fetched, " << applied->frames_refetched << " re-fetched, " << applied->bytes_fetched
            << " compressed bytes fetched; sha256 matches the manifest\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "write") return cmd_write(argc, argv);
  if (cmd == "read") return cmd_read(argc, argv, true);
  if (cmd == "validate") return cmd_read(argc, argv, false);
  if (cmd == "sign") return cmd_sign(argc, argv);
  if (cmd == "plan") return cmd_plan(argc, argv);
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::cout << usage;
    return 0;
  }
  std::cerr << usage;
  return 2;
}
