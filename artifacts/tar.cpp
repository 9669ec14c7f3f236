#include "artifacts/tar.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

namespace tern::artifacts::tar {
namespace {

Error bad(std::string msg) { return fail(Errc::invalid_argument, "tar: " + std::move(msg)); }

std::string field(std::span<const std::uint8_t, block> b, std::size_t off, std::size_t len) {
  const char* p = reinterpret_cast<const char*>(b.data()) + off;
  return std::string(p, strnlen(p, len));
}

// Octal (space/NUL terminated) or GNU base-256 (high bit of the first byte set).
Result<std::uint64_t> number(std::span<const std::uint8_t, block> b, std::size_t off, std::size_t len,
                             std::string_view what) {
  const std::uint8_t* p = b.data() + off;
  if (p[0] & 0x80) {
    if (p[0] != 0x80) return bad(std::string(what) + " is a negative base-256 number");
    std::uint64_t v = 0;
    for (std::size_t i = 1; i < len; ++i) {
      if (v >> 56) return bad(std::string(what) + " overflows 64 bits");
      v = (v << 8) | p[i];
    }
    return v;
  }
  std::uint64_t v = 0;
  std::size_t i = 0;
  while (i < len && p[i] == ' ') ++i;
  bool any = false;
  for (; i < len && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v >> 61) return bad(std::string(what) + " overflows 64 bits");
    v = v * 8 + (p[i] - '0');
    any = true;
  }
  for (; i < len; ++i)
    if (p[i] != ' ' && p[i] != '\0') return bad(std::string(what) + " is not an octal number");
  if (!any && what != "mtime") return bad(std::string(what) + " is empty");
  return v;
}

void put_octal(char* dst, std::size_t len, std::uint64_t v) {
  // len-1 digits, zero padded, NUL terminated.
  std::memset(dst, '0', len - 1);
  dst[len - 1] = '\0';
  for (std::size_t i = len - 1; i-- > 0 && v;) {
    dst[i] = static_cast<char>('0' + (v & 7));
    v >>= 3;
  }
}

}  // namespace

std::string pax_record(std::string_view key, std::string_view value) {
  // The length prefix counts itself.
  std::size_t body = 1 + key.size() + 1 + value.size() + 1;
  std::size_t len = body + 1;
  while (std::to_string(len).size() + body != len) len = std::to_string(len).size() + body;
  return std::to_string(len) + " " + std::string(key) + "=" + std::string(value) + "\n";
}

namespace {

void raw_header(std::string& out, std::string_view name, std::uint64_t size, char type, std::uint32_t mode,
                std::int64_t mtime) {
  char h[block];
  std::memset(h, 0, block);
  std::memcpy(h, name.data(), std::min<std::size_t>(name.size(), 100));
  put_octal(h + 100, 8, mode);
  put_octal(h + 108, 8, 0);
  put_octal(h + 116, 8, 0);
  put_octal(h + 124, 12, size);
  put_octal(h + 136, 12, static_cast<std::uint64_t>(std::max<std::int64_t>(mtime, 0)));
  std::memset(h + 148, ' ', 8);
  h[156] = type;
  std::memcpy(h + 257, "ustar\0" "00", 8);
  unsigned sum = 0;
  for (unsigned char c : std::string_view(h, block)) sum += c;
  put_octal(h + 148, 7, sum);
  h[155] = ' ';
  out.append(h, block);
}

}  // namespace

bool is_zero_block(std::span<const std::uint8_t, block> b) {
  return std::all_of(b.begin(), b.end(), [](std::uint8_t c) { return c == 0; });
}

Result<Header> parse_header(std::span<const std::uint8_t, block> b) {
  auto stored = number(b, 148, 8, "checksum");
  if (!stored) return stored.error();
  unsigned long sum = 0;
  for (std::size_t i = 0; i < block; ++i) sum += (i >= 148 && i < 156) ? ' ' : b[i];
  if (sum != *stored) return bad("header checksum mismatch (corrupt or not a tar archive)");

  Header h;
  std::string name = field(b, 0, 100);
  std::string magic = field(b, 257, 6);
  if (magic == "ustar") {  // POSIX ustar (and GNU "ustar  ", whose prefix area differs)
    std::string prefix = field(b, 345, 155);
    if (!prefix.empty() && std::memcmp(b.data() + 257, "ustar\0", 6) == 0) name = prefix + "/" + name;
  }
  h.name = std::move(name);
  auto size = number(b, 124, 12, "size");
  if (!size) return size.error();
  h.size = *size;
  auto mode = number(b, 100, 8, "mode");
  h.mode = mode ? static_cast<std::uint32_t>(*mode) : 0;
  auto mtime = number(b, 136, 12, "mtime");
  h.mtime = mtime ? static_cast<std::int64_t>(*mtime) : 0;
  switch (b[156]) {
    case '0':
    case '\0':
    case '7': h.kind = Kind::file; break;
    case '5': h.kind = Kind::directory; break;
    case 'x': h.kind = Kind::pax_extended; break;
    case 'g': h.kind = Kind::pax_global; break;
    case 'L': h.kind = Kind::gnu_long_name; break;
    default: h.kind = Kind::other; break;
  }
  return h;
}

Result<std::map<std::string, std::string>> parse_pax(std::string_view rec) {
  std::map<std::string, std::string> out;
  while (!rec.empty()) {
    auto sp = rec.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp > 20) return bad("malformed PAX record");
    std::size_t len = 0;
    for (char c : rec.substr(0, sp)) {
      if (c < '0' || c > '9') return bad("malformed PAX record length");
      len = len * 10 + (c - '0');
    }
    if (len <= sp + 1 || len > rec.size() || rec[len - 1] != '\n') return bad("malformed PAX record");
    auto kv = rec.substr(sp + 1, len - sp - 2);
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) return bad("PAX record without '='");
    out[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
    rec.remove_prefix(len);
  }
  return out;
}

Result<void> apply_pax(Header& h, const std::map<std::string, std::string>& pax) {
  if (auto it = pax.find("path"); it != pax.end()) h.name = it->second;
  if (auto it = pax.find("size"); it != pax.end()) {
    std::uint64_t v = 0;
    if (it->second.empty()) return bad("PAX size is empty");
    for (char c : it->second) {
      if (c < '0' || c > '9' || v > (UINT64_MAX - 9) / 10) return bad("PAX size '" + it->second + "' is invalid");
      v = v * 10 + static_cast<unsigned>(c - '0');
    }
    h.size = v;
  }
  return {};
}

void write_pax(std::string& out, std::string_view records) {
  raw_header(out, "PaxHeader", records.size(), 'x', 0644, 0);
  out += records;
  out.append(padding(records.size()), '\0');
}

void write_file_header(std::string& out, std::string_view name, std::uint64_t size, std::uint32_t mode,
                       std::int64_t mtime) {
  constexpr std::uint64_t max_octal = (1ull << 33) - 1;  // 11 octal digits
  if (name.size() > 100 || size > max_octal) {
    std::string records;
    if (name.size() > 100) records += pax_record("path", name);
    if (size > max_octal) records += pax_record("size", std::to_string(size));
    write_pax(out, records);
  }
  raw_header(out, name.substr(0, 100), std::min(size, max_octal), '0', mode, mtime);
}

void write_file(std::string& out, std::string_view name, std::string_view content, std::uint32_t mode,
                std::int64_t mtime) {
  write_file_header(out, name, content.size(), mode, mtime);
  out += content;
  out.append(padding(content.size()), '\0');
}

void write_end(std::string& out) { out.append(2 * block, '\0'); }

Result<std::vector<std::pair<std::string, std::string>>> read_all(std::string_view a, std::size_t max_files) {
  std::vector<std::pair<std::string, std::string>> files;
  std::optional<std::map<std::string, std::string>> pax;
  std::optional<std::string> long_name;
  std::size_t pos = 0;
  while (pos + block <= a.size()) {
    std::span<const std::uint8_t, block> b(reinterpret_cast<const std::uint8_t*>(a.data()) + pos, block);
    if (is_zero_block(b)) return files;
    auto h = parse_header(b);
    if (!h) return h.error();
    pos += block;
    if (pax) {
      if (auto r = apply_pax(*h, *pax); !r) return r.error();
      pax.reset();
    }
    if (long_name) {
      h->name = *long_name;
      long_name.reset();
    }
    if (h->size > a.size() - pos) return bad("member '" + h->name + "' is truncated");
    std::string_view content = a.substr(pos, h->size);
    pos += h->size + padding(h->size);
    switch (h->kind) {
      case Kind::pax_extended: {
        auto p = parse_pax(content);
        if (!p) return p.error();
        pax = std::move(*p);
        break;
      }
      case Kind::gnu_long_name: long_name = std::string(content.substr(0, strnlen(content.data(), content.size()))); break;
      case Kind::file:
        if (files.size() >= max_files) return bad("more than " + std::to_string(max_files) + " members");
        files.emplace_back(h->name, std::string(content));
        break;
      default: break;  // directories and others carry nothing we need
    }
  }
  if (pos != a.size() || files.empty()) return bad("archive ends without an end-of-archive marker");
  return files;  // lenient: a complete last member without the two zero blocks
}

}  // namespace tern::artifacts::tar
