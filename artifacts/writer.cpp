#include "artifacts/writer.hpp"

#include "artifacts/chunk_index.hpp"
#include "artifacts/crypto.hpp"
#include "artifacts/tar.hpp"
#include "common/json.hpp"
#include "common/protocol.hpp"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sys/stat.h>

namespace tern::artifacts {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t max_index_text = 12 * 1024 * 1024;

Error invalid(std::string m) { return fail(Errc::invalid_argument, std::move(m)); }

boost::json::array to_array(const std::vector<std::string>& v) {
  boost::json::array a;
  for (auto& s : v) a.emplace_back(s);
  return a;
}

// The payload's SHA-256 and size, read once.
Result<std::pair<std::string, std::uint64_t>> hash_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return Error::from_errno("opening payload " + p.string(), errno);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  std::uint64_t size = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    auto n = static_cast<std::size_t>(in.gcount());
    h.update(std::string_view(buf.data(), n));
    size += n;
  }
  if (in.bad()) return Error::from_errno("reading payload " + p.string(), errno);
  return std::pair{h.hex_final(), size};
}

Result<std::string> read_small(const fs::path& p, std::string_view what) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return Error::from_errno("opening " + std::string(what) + " " + p.string(), errno);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return Error::from_errno("reading " + std::string(what) + " " + p.string(), errno);
  return s;
}

class Out {
 public:
  explicit Out(const fs::path& p) : path_(p), f_(p, std::ios::binary | std::ios::trunc) {}
  bool ok() const { return static_cast<bool>(f_); }
  Result<void> write(std::string_view d) {
    f_.write(d.data(), static_cast<std::streamsize>(d.size()));
    if (!f_) return Error::from_errno("writing " + path_.string(), errno);
    pos_ += d.size();
    return {};
  }
  std::uint64_t pos() const { return pos_; }
  Result<void> patch(std::uint64_t at, std::string_view d) {
    f_.seekp(static_cast<std::streamoff>(at));
    f_.write(d.data(), static_cast<std::streamsize>(d.size()));
    f_.seekp(static_cast<std::streamoff>(pos_));
    if (!f_) return Error::from_errno("writing " + path_.string(), errno);
    return {};
  }
  Result<void> close() {
    f_.flush();
    f_.close();
    if (!f_) return Error::from_errno("closing " + path_.string(), errno);
    return {};
  }

 private:
  fs::path path_;
  std::ofstream f_;
  std::uint64_t pos_ = 0;
};

// The outer tar header of the data member, always in the same 1536-byte PAX form (the size as a
// 20-digit record) so it can be written before the compressed size is known and patched after.
std::string data_member_header(std::string_view name, std::uint64_t size) {
  std::string digits = std::to_string(size);
  digits.insert(0, 20 - digits.size(), '0');
  std::string out;
  tar::write_pax(out, tar::pax_record("size", digits));
  tar::write_file_header(out, name, std::min<std::uint64_t>(size, (1ull << 33) - 1));
  return out;
}


// header-info, key for key as mender-artifact 4.4 writes it, for one payload of `type`.
boost::json::object header_info_json(const WriterOptions& o, const std::string& type) {
  boost::json::object info;
  boost::json::array payloads;
  payloads.emplace_back(boost::json::object{{"type", type}});
  info["payloads"] = payloads;
  boost::json::object prov{{"artifact_name", o.artifact_name}};
  if (!o.artifact_group.empty()) prov["artifact_group"] = o.artifact_group;
  info["artifact_provides"] = prov;
  boost::json::object deps{{"device_type", to_array(o.device_types)}};
  if (!o.depends_artifact_names.empty()) deps["artifact_name"] = to_array(o.depends_artifact_names);
  if (!o.depends_groups.empty()) deps["artifact_group"] = to_array(o.depends_groups);
  info["artifact_depends"] = deps;
  return info;
}

// type-info with the caller's depends and provides; the writer adds the type's own provides and
// clears_artifact_provides.
boost::json::object type_info_json(const WriterOptions& o, const std::string& type) {
  boost::json::object type_info;
  type_info["type"] = type;
  if (!o.depends.empty()) {
    boost::json::object d;
    for (auto& [k, v] : o.depends) d[k] = v;
    type_info["artifact_depends"] = d;
  }
  boost::json::object tprov;
  for (auto& [k, v] : o.provides) tprov[k] = v;
  type_info["artifact_provides"] = tprov;
  return type_info;
}

// header.tar up to its meta-data: header-info, the state scripts, headers/0000/type-info.
Result<std::string> header_tar_start(const WriterOptions& o, const boost::json::object& info,
                                     const boost::json::object& type_info) {
  std::string header_tar;
  tar::write_file(header_tar, "header-info", json::write(info));
  for (auto& script : o.scripts) {
    auto content = read_small(script, "state script");
    if (!content) return content.error();
    tar::write_file(header_tar, "scripts/" + script.filename().string(), *content, 0755);
  }
  tar::write_file(header_tar, "headers/0000/type-info", json::write(type_info));
  return header_tar;
}

// The members before data/: version, manifest, manifest.sig when a key is given, header.tar.*.
Result<std::string> artifact_head(const WriterOptions& o, const std::string& version, const std::string& manifest,
                                  const std::string& header_name, const std::string& header_z) {
  std::string head;
  tar::write_file(head, "version", version);
  tar::write_file(head, "manifest", manifest);
  if (o.signing_key_pem) {
    auto sig = sign_base64(manifest, *o.signing_key_pem);
    if (!sig) return sig.error();
    tar::write_file(head, "manifest.sig", *sig);
  }
  tar::write_file(head, header_name, header_z);
  return head;
}


struct DataTar {
  std::uint64_t size = 0;               // compressed bytes of data/0000.tar.*
  std::optional<ChunkIndex> index;
};

// Writes the compressed data/0000.tar to `path`. zstd frames: the payload's tar header alone, then
// one frame per frame_size bytes of payload (aligned on the payload, so on its ext4 blocks), then
// the tar padding and end. The index records the payload frames.
Result<DataTar> write_data_tar(const WriterOptions& o, const std::string& payload_name, std::uint64_t payload_size,
                               const fs::path& path) {
  std::ifstream in(o.payload, std::ios::binary);
  if (!in) return Error::from_errno("opening payload " + o.payload.string(), errno);
  std::vector<char> buf(1 << 20);
  in.read(buf.data(), 4096);
  auto head = std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(buf.data()),
                                            static_cast<std::size_t>(in.gcount()));
  in.clear();
  in.seekg(0);
  const bool framed = o.compression == Compression::zstd || o.compression == Compression::none;
  const bool indexed = o.chunk_index && framed && payload_size > 0;
  std::uint32_t block_size = o.chunk_block_size ? o.chunk_block_size : ext4_block_size(head).value_or(4096);
  if (indexed && (block_size < 512 || (block_size & (block_size - 1)) || o.frame_size % block_size))
    return invalid("writing artifact: the frame size " + std::to_string(o.frame_size) +
                   " is not a multiple of the chunk index block size " + std::to_string(block_size));
  if (o.frame_size > (64u << 20)) return invalid("writing artifact: frame size over 64 MiB");

  Out out(path);
  if (!out.ok()) return Error::from_errno("creating " + path.string(), errno);
  auto z = make_compressor(o.compression, o.level);
  Output sink = [&](std::span<const std::uint8_t> b) {
    return out.write(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
  };
  auto feed = [&](std::string_view d) {
    return z->feed({reinterpret_cast<const std::uint8_t*>(d.data()), d.size()}, sink);
  };
  struct stat st {};
  ::stat(o.payload.c_str(), &st);
  std::string inner;
  tar::write_file_header(inner, payload_name, payload_size, 0644, st.st_mtime);
  if (auto r = feed(inner); !r) return r.error();
  if (auto r = z->end_frame(sink); !r) return r.error();
  std::optional<ChunkIndexBuilder> builder;
  if (indexed) builder.emplace(block_size, static_cast<std::uint32_t>(o.frame_size), payload_size, o.compression, out.pos(),
                                o.chunk_block_hash);

  std::uint64_t done = 0, frame_start = out.pos();
  while (done < payload_size) {
    auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), payload_size - done));
    want = static_cast<std::size_t>(std::min<std::uint64_t>(want, o.frame_size - done % o.frame_size));
    in.read(buf.data(), static_cast<std::streamsize>(want));
    if (static_cast<std::size_t>(in.gcount()) != want)
      return fail(Errc::io, "reading payload " + o.payload.string() + ": it changed while being written");
    if (auto r = feed(std::string_view(buf.data(), want)); !r) return r.error();
    if (builder) builder->feed({reinterpret_cast<const std::uint8_t*>(buf.data()), want});
    done += want;
    if (done % o.frame_size == 0 || done == payload_size) {
      if (auto r = z->end_frame(sink); !r) return r.error();
      if (builder) builder->frame_done(out.pos() - frame_start);
      frame_start = out.pos();
    }
    if (o.progress) o.progress(done, payload_size);
  }
  std::string tail(tar::padding(payload_size), '\0');
  tar::write_end(tail);
  if (auto r = feed(tail); !r) return r.error();
  if (auto r = z->finish(sink); !r) return r.error();
  if (auto r = out.close(); !r) return r.error();
  DataTar d;
  d.size = out.pos();
  if (builder) {
    auto idx = builder->finish();
    if (!idx) return idx.error();
    d.index = std::move(*idx);
  }
  return d;
}

}  // namespace

Result<void> write_rootfs_artifact(const WriterOptions& o, const fs::path& out_path) {
  if (o.device_types.empty()) return invalid("writing artifact: at least one device type (-t) is required");
  if (o.artifact_name.empty()) return invalid("writing artifact: an artifact name (-n) is required");
  if (o.frame_size == 0) return invalid("writing artifact: zero frame size");

  auto payload = hash_file(o.payload);
  if (!payload) return payload.error();
  auto [payload_sha, payload_size] = *payload;
  std::string payload_name = o.payload.filename().string();

  boost::json::object info = header_info_json(o, "rootfs-image");
  boost::json::object type_info = type_info_json(o, "rootfs-image");
  boost::json::object& tprov = type_info["artifact_provides"].as_object();
  tprov["rootfs-image.checksum"] = payload_sha;
  tprov["rootfs-image.version"] = o.software_version.empty() ? o.artifact_name : o.software_version;
  type_info["clears_artifact_provides"] = to_array(
      o.clears_provides.value_or(std::vector<std::string>{"artifact_group", "rootfs_image_checksum", "rootfs-image.*"}));

  // data/0000.tar.*, compressed first into a temporary file: the chunk index in the header needs
  // every frame's compressed size.
  fs::path tmp = out_path;
  tmp += ".tmp";
  fs::path data_tmp = out_path;
  data_tmp += ".data.tmp";
  struct Cleanup {
    fs::path a, b;
    ~Cleanup() {
      std::error_code ec;
      fs::remove(a, ec);
      fs::remove(b, ec);
    }
  } cleanup{tmp, data_tmp};
  auto data = write_data_tar(o, payload_name, payload_size, data_tmp);
  if (!data) return data.error();

  auto started = header_tar_start(o, info, type_info);
  if (!started) return started.error();
  std::string header_tar = std::move(*started);
  std::string meta_data;
  if (data->index) {
    // The reader takes header.tar up to 16 MiB: an index over 12 MiB (payloads of several GiB)
    // is left out, and such an artifact installs by the full stream.
    auto encoded = data->index->encode();
    if (encoded.size() <= max_index_text) {
      boost::json::object meta{{std::string(chunk_index_key), std::move(encoded)}};
      meta_data = json::write(meta);
    }
  }
  tar::write_file(header_tar, "headers/0000/meta-data", meta_data);
  tar::write_end(header_tar);
  auto header_z = compress_all(o.compression, header_tar);
  if (!header_z) return header_z.error().context("compressing header.tar");
  std::string header_name = "header.tar" + std::string(suffix(o.compression));
  std::string data_name = "data/0000.tar" + std::string(suffix(o.compression));

  const std::string version = R"({"format":"mender","version":3})";
  // The manifest, sorted by name like mender-artifact's.
  std::map<std::string, std::string> entries{{"version", Sha256::hex(version)},
                                             {header_name, Sha256::hex(*header_z)},
                                             {"data/0000/" + payload_name, payload_sha}};
  std::string manifest;
  for (auto& [name, digest] : entries) manifest += digest + "  " + name + "\n";

  Out out(tmp);
  if (!out.ok()) return Error::from_errno("creating " + tmp.string(), errno);
  auto head_r = artifact_head(o, version, manifest, header_name, *header_z);
  if (!head_r) return head_r.error();
  std::string head = std::move(*head_r);
  head += data_member_header(data_name, data->size);
  if (auto r = out.write(head); !r) return r;

  std::ifstream in(data_tmp, std::ios::binary);
  if (!in) return Error::from_errno("opening " + data_tmp.string(), errno);
  std::vector<char> buf(1 << 20);
  for (std::uint64_t left = data->size; left > 0;) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
    in.read(buf.data(), static_cast<std::streamsize>(n));
    if (static_cast<std::size_t>(in.gcount()) != n) return fail(Errc::io, "reading back " + data_tmp.string());
    if (auto r = out.write(std::string_view(buf.data(), n)); !r) return r;
    left -= n;
  }
  std::string end(tar::padding(data->size), '\0');
  tar::write_end(end);
  if (auto r = out.write(end); !r) return r;
  if (auto r = out.close(); !r) return r;
  std::error_code ec;
  fs::rename(tmp, out_path, ec);
  if (ec) return Error(ec, "renaming " + tmp.string() + " to " + out_path.string());
  return {};
}

Result<void> write_module_artifact(const WriterOptions& o, const fs::path& out_path) {
  if (o.device_types.empty()) return invalid("writing artifact: at least one device type (-t) is required");
  if (o.artifact_name.empty()) return invalid("writing artifact: an artifact name (-n) is required");
  const std::string& type = o.payload_type;
  // The type names the module's executable on the device.
  if (type.empty() || type == "." || type == ".." || type.find_first_of("/\n\t ") != std::string::npos)
    return invalid("writing artifact: '" + type + "' is not a valid update module type (-T)");
  if (type == "rootfs-image") return invalid("writing artifact: rootfs-image is written with 'write rootfs-image'");

  struct File {
    fs::path path;
    std::string name, sha256;
    std::uint64_t size = 0;
    std::uint32_t mode = 0644;
    std::int64_t mtime = 0;
  };
  std::vector<File> files;
  std::map<std::string, std::string> entries;  // the manifest, sorted by name like mender-artifact's
  for (auto& p : o.files) {
    File f{.path = p, .name = p.filename().string()};
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return Error::from_errno("opening payload " + p.string(), errno);
    if (!S_ISREG(st.st_mode)) return invalid("writing artifact: " + p.string() + " is not a regular file");
    f.mode = st.st_mode & 07777;
    f.mtime = st.st_mtime;
    auto hashed = hash_file(p);
    if (!hashed) return hashed.error();
    std::tie(f.sha256, f.size) = *hashed;
    if (!entries.emplace("data/0000/" + f.name, f.sha256).second)
      return invalid("writing artifact: two files named '" + f.name + "'");
    files.push_back(std::move(f));
  }

  boost::json::object info = header_info_json(o, type);
  boost::json::object type_info = type_info_json(o, type);
  boost::json::object& tprov = type_info["artifact_provides"].as_object();
  tprov["rootfs-image." + type + ".version"] = o.software_version.empty() ? o.artifact_name : o.software_version;
  type_info["clears_artifact_provides"] =
      to_array(o.clears_provides.value_or(std::vector<std::string>{"rootfs-image." + type + ".*"}));

  auto started = header_tar_start(o, info, type_info);
  if (!started) return started.error();
  std::string header_tar = std::move(*started);
  if (o.meta_data) {
    auto meta = read_small(*o.meta_data, "meta-data");
    if (!meta) return meta.error();
    auto parsed = json::Document::parse(*meta, "meta-data " + o.meta_data->string(), 4u << 20);
    if (!parsed) return parsed.error();
    if (auto root = parsed->root(); !root) return root.error().context("meta-data " + o.meta_data->string());
    tar::write_file(header_tar, "headers/0000/meta-data", *meta);
  }
  tar::write_end(header_tar);
  auto header_z = compress_all(o.compression, header_tar);
  if (!header_z) return header_z.error().context("compressing header.tar");
  std::string header_name = "header.tar" + std::string(suffix(o.compression));
  std::string data_name = "data/0000.tar" + std::string(suffix(o.compression));

  const std::string version = R"({"format":"mender","version":3})";
  entries.emplace("version", Sha256::hex(version));
  entries.emplace(header_name, Sha256::hex(*header_z));
  std::string manifest;
  for (auto& [name, digest] : entries) manifest += digest + "  " + name + "\n";

  fs::path tmp = out_path;
  tmp += ".tmp";
  struct Cleanup {
    fs::path a;
    ~Cleanup() {
      std::error_code ec;
      fs::remove(a, ec);
    }
  } cleanup{tmp};
  Out out(tmp);
  if (!out.ok()) return Error::from_errno("creating " + tmp.string(), errno);
  auto head_r = artifact_head(o, version, manifest, header_name, *header_z);
  if (!head_r) return head_r.error();
  std::string head = std::move(*head_r);
  // The data member's size is known only once it is compressed: its header is patched after.
  const std::uint64_t data_header_at = out.pos() + head.size();
  head += data_member_header(data_name, 0);
  if (auto r = out.write(head); !r) return r;
  const std::uint64_t data_start = out.pos();

  auto z = make_compressor(o.compression, o.level);
  Output sink = [&](std::span<const std::uint8_t> b) {
    return out.write(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
  };
  auto feed = [&](std::string_view d) {
    return z->feed({reinterpret_cast<const std::uint8_t*>(d.data()), d.size()}, sink);
  };
  std::vector<char> buf(1 << 20);
  for (auto& f : files) {
    std::string h;
    tar::write_file_header(h, f.name, f.size, f.mode, f.mtime);
    if (auto r = feed(h); !r) return r.error();
    std::ifstream in(f.path, std::ios::binary);
    if (!in) return Error::from_errno("opening payload " + f.path.string(), errno);
    for (std::uint64_t left = f.size; left > 0;) {
      auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
      in.read(buf.data(), static_cast<std::streamsize>(n));
      if (static_cast<std::size_t>(in.gcount()) != n)
        return fail(Errc::io, "reading payload " + f.path.string() + ": it changed while being written");
      if (auto r = feed(std::string_view(buf.data(), n)); !r) return r.error();
      left -= n;
    }
    if (auto r = feed(std::string(tar::padding(f.size), '\0')); !r) return r.error();
  }
  std::string tail;
  tar::write_end(tail);
  if (auto r = feed(tail); !r) return r.error();
  if (auto r = z->finish(sink); !r) return r.error();
  const std::uint64_t data_size = out.pos() - data_start;
  if (auto r = out.patch(data_header_at, data_member_header(data_name, data_size)); !r) return r;
  std::string end(tar::padding(data_size), '\0');
  tar::write_end(end);
  if (auto r = out.write(end); !r) return r;
  if (auto r = out.close(); !r) return r;
  std::error_code ec;
  fs::rename(tmp, out_path, ec);
  if (ec) return Error(ec, "renaming " + tmp.string() + " to " + out_path.string());
  return {};
}

Result<void> sign_artifact(const fs::path& in_path, const std::string& key_pem, const fs::path& out_path) {
  std::ifstream in(in_path, std::ios::binary);
  if (!in) return Error::from_errno("opening " + in_path.string(), errno);
  fs::path tmp = out_path;
  tmp += ".tmp";
  Out out(tmp);
  if (!out.ok()) return Error::from_errno("creating " + tmp.string(), errno);
  std::string pending;  // raw PAX/long-name blocks that belong to the next member
  std::vector<char> buf(1 << 20);
  bool signed_done = false;
  for (;;) {
    char block[tar::block];
    in.read(block, tar::block);
    if (in.gcount() == 0) break;
    if (in.gcount() != tar::block) return fail(Errc::invalid_argument, in_path.string() + ": truncated tar header");
    std::span<const std::uint8_t, tar::block> b(reinterpret_cast<const std::uint8_t*>(block), tar::block);
    if (tar::is_zero_block(b)) break;
    auto h = tar::parse_header(b);
    if (!h) return h.error().context(in_path.string());
    std::uint64_t len = h->size + tar::padding(h->size);
    if (h->kind == tar::Kind::pax_extended) {
      // Keep the raw PAX member, and apply it to know the real size of what follows.
      std::string content(len, '\0');
      in.read(content.data(), static_cast<std::streamsize>(len));
      auto pax = tar::parse_pax(std::string_view(content).substr(0, h->size));
      if (!pax) return pax.error();
      pending += std::string(block, tar::block) + content;
      char next[tar::block];
      in.read(next, tar::block);
      auto nh = tar::parse_header(std::span<const std::uint8_t, tar::block>(reinterpret_cast<const std::uint8_t*>(next), tar::block));
      if (!nh) return nh.error();
      if (auto r = tar::apply_pax(*nh, *pax); !r) return r.error();
      h = nh;
      std::memcpy(block, next, tar::block);
      len = h->size + tar::padding(h->size);
    }
    if (h->name == "manifest.sig") {  // replaced below
      in.ignore(static_cast<std::streamsize>(len));
      pending.clear();
      continue;
    }
    if (auto r = out.write(pending + std::string(block, tar::block)); !r) return r;
    pending.clear();
    std::string manifest;
    for (std::uint64_t left = len; left > 0;) {
      auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
      in.read(buf.data(), static_cast<std::streamsize>(n));
      if (static_cast<std::size_t>(in.gcount()) != n) return fail(Errc::invalid_argument, in_path.string() + ": truncated");
      if (h->name == "manifest") manifest.append(buf.data(), std::min<std::uint64_t>(n, h->size - manifest.size()));
      if (auto r = out.write(std::string_view(buf.data(), n)); !r) return r;
      left -= n;
    }
    if (h->name == "manifest") {
      auto sig = sign_base64(manifest, key_pem);
      if (!sig) return sig.error();
      std::string member;
      tar::write_file(member, "manifest.sig", *sig);
      if (auto r = out.write(member); !r) return r;
      signed_done = true;
    }
  }
  if (!signed_done) return fail(Errc::invalid_argument, in_path.string() + ": no manifest (not an artifact?)");
  std::string end;
  tar::write_end(end);
  if (auto r = out.write(end); !r) return r;
  if (auto r = out.close(); !r) return r;
  std::error_code ec;
  fs::rename(tmp, out_path, ec);
  if (ec) return Error(ec, "renaming " + tmp.string() + " to " + out_path.string());
  return {};
}

}  // namespace tern::artifacts
