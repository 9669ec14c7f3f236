// tern-artifact: write, read, validate and sign Mender v3 artifacts, with mender-artifact's flags
// where they overlap.
#include "artifacts/crypto.hpp"
#include "artifacts/reader.hpp"
#include "artifacts/writer.hpp"

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
    "  tern-artifact read FILE [-k PUBLIC_KEY]\n"
    "  tern-artifact validate FILE [-k PUBLIC_KEY]\n"
    "  tern-artifact sign FILE -k PRIVATE_KEY [-o OUT]\n";

int die(const std::string& msg) {
  std::cerr << "tern-artifact: " << msg << "\n";
  return 1;
}

std::optional<std::string> slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool split_kv(const std::string& s, std::string& k, std::string& v) {
  auto c = s.find(':');
  if (c == std::string::npos || c == 0) return false;
  k = s.substr(0, c);
  v = s.substr(c + 1);
  return true;
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
  if (argc < 3 || std::strcmp(argv[2], "rootfs-image") != 0) return die("write: only 'rootfs-image' is supported\n" + std::string(usage));
  art::WriterOptions o;
  std::string out;
  std::vector<std::string> clears;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc) return std::nullopt;
      return std::string(argv[++i]);
    };
    auto v = next();
    if (!v) return die("write: " + a + " needs a value");
    std::string k, val;
    if (a == "-f" || a == "--file") o.payload = *v;
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
    else if (a == "--frame-size") o.frame_size = std::stoull(*v);
    else return die("write: unknown flag '" + a + "'\n" + usage);
  }
  if (o.payload.empty() || out.empty()) return die("write: -f FILE and -o OUT are required\n" + std::string(usage));
  if (!clears.empty()) o.clears_provides = clears;
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
            << "    Metadata: " << (h->meta_data_json.empty() ? "Nothing" : h->meta_data_json) << "\n"
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
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::cout << usage;
    return 0;
  }
  std::cerr << usage;
  return 2;
}
