// Paged and aggregated reads for the dashboard (see fleet_queries.hpp).
#include "broker-bridge/fleet_queries.hpp"

#include "common/json.hpp"

#include <boost/json/array.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <cctype>
#include <memory>

namespace tern::bridge {

namespace {

Error invalid(std::string msg) { return fail(Errc::invalid_argument, std::move(msg)); }

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

void count(boost::json::object& o, const std::string& key) {
  auto& c = o[key];
  c = c.is_null() ? std::int64_t{1} : c.as_int64() + 1;
}

constexpr std::uint64_t max_page = 500;
constexpr std::size_t max_failures = 1000;

}  // namespace

boost::json::object device_json(const DeviceRecord& d) {
  return boost::json::object{{"id", d.id},
                             {"admission", d.admission},
                             {"group", d.group},
                             {"device_type", d.device_type},
                             {"presence", d.presence},
                             {"last_seen", d.last_seen},
                             {"artifact_name", d.artifact_name}};
}

Result<boost::json::object> page_devices(Store& store, std::string_view body) {
  const std::string what = "devices/page command";
  auto doc = json::Document::parse(body.empty() ? std::string_view("{}") : body, what);
  if (!doc) return doc.error();
  auto o = doc->root();
  if (!o) return o.error();
  for (auto& k : o->keys())
    if (k != "offset" && k != "limit" && k != "search" && k != "admission" && k != "presence" && k != "group" &&
        k != "device_type" && k != "reply_to")
      return invalid(what + ": unknown field '" + k + "'");
  auto offset = o->u64_or("offset", 0);
  if (!offset) return offset.error().context(what);
  auto limit = o->u64_or("limit", 50);
  if (!limit) return limit.error().context(what);
  if (*limit < 1 || *limit > max_page)
    return invalid(what + ": field 'limit' is " + std::to_string(*limit) + ", not between 1 and " +
                   std::to_string(max_page));
  std::string filters[5];
  const char* names[5] = {"search", "admission", "presence", "group", "device_type"};
  for (int i = 0; i < 5; ++i) {
    auto v = o->string_or(names[i], "");
    if (!v) return v.error().context(what);
    filters[i] = *v;
  }
  const std::string search = lower(filters[0]);

  auto all = store.devices();
  if (!all) return all.error();
  std::sort(all->begin(), all->end(), [](auto& a, auto& b) { return a.id < b.id; });
  boost::json::object admission, presence;
  boost::json::array page;
  std::uint64_t matched = 0;
  for (auto& d : *all) {
    count(admission, d.admission);
    count(presence, d.presence);
    if (!filters[1].empty() && d.admission != filters[1]) continue;
    if (!filters[2].empty() && d.presence != filters[2]) continue;
    if (!filters[3].empty() && d.group != filters[3]) continue;
    if (!filters[4].empty() && d.device_type != filters[4]) continue;
    if (!search.empty() && lower(d.id).find(search) == std::string::npos &&
        lower(d.group).find(search) == std::string::npos && lower(d.device_type).find(search) == std::string::npos &&
        lower(d.artifact_name).find(search) == std::string::npos)
      continue;
    if (matched >= *offset && page.size() < *limit)
      page.push_back(device_json(d));
    ++matched;
  }
  return boost::json::object{{"total", all->size()},   {"matched", matched},       {"offset", *offset},
                             {"limit", *limit},        {"devices", std::move(page)}, {"admission", std::move(admission)},
                             {"presence", std::move(presence)}};
}

Result<boost::json::object> deployment_progress(Store& store, const std::string& id) {
  auto d = store.deployment(id);
  if (!d) return d.error();
  if (!*d) return fail(Errc::not_found, "progress: unknown deployment '" + id + "'");
  // No scan of the deployment's rows in the bridge: counts from the counters (migration 5), bytes
  // from one aggregate query, and only the failure rows listed (an indexed, limited query).
  auto counted = store.deployment_counts(id);
  if (!counted) return counted.error();
  auto summed = store.phase_bytes(id);
  if (!summed) return summed.error();
  struct Phase {
    boost::json::object counts;
    std::uint64_t devices = 0, bytes = 0, total = 0;
  };
  std::vector<Phase> phases((*d)->phases.size());
  auto phase = [&](int p) -> Phase& {
    if (static_cast<std::size_t>(p) >= phases.size()) phases.resize(static_cast<std::size_t>(p) + 1);
    return phases[static_cast<std::size_t>(p)];
  };
  std::uint64_t failed = 0;
  for (auto& c : *counted) {
    if (c.phase < 0) continue;
    auto& p = phase(c.phase);
    p.devices += c.n;
    p.counts[c.status] = static_cast<std::int64_t>(c.n);
    if (c.status == "failure" || c.status == "aborted") failed += c.n;
  }
  for (auto& b : *summed) {
    if (b.phase < 0) continue;
    auto& p = phase(b.phase);
    p.bytes = b.bytes;
    p.total = b.total;
  }
  auto rows = store.failed_device_deployments(id, max_failures);
  if (!rows) return rows.error();
  boost::json::array failures;
  for (auto& r : *rows)
    failures.push_back(boost::json::object{{"device", r.device},
                                           {"status", r.status},
                                           {"error", r.error},
                                           {"attempt", r.attempt},
                                           {"phase", r.phase + 1},
                                           {"updated", r.updated}});
  boost::json::array out;
  for (std::size_t i = 0; i < phases.size(); ++i) {
    auto& p = phases[i];
    out.push_back(boost::json::object{{"phase", i + 1},
                                      {"percent", i < (*d)->phases.size() ? (*d)->phases[i] : 100},
                                      {"devices", p.devices},
                                      {"counts", std::move(p.counts)},
                                      {"bytes", p.bytes},
                                      {"total_bytes", p.total}});
  }
  return boost::json::object{{"id", id},
                             {"state", (*d)->state},
                             {"phase", (*d)->phase + 1},
                             {"phases", std::move(out)},
                             {"failures", std::move(failures)},
                             {"failure_count", failed}};
}

std::string public_key_fingerprint(const std::optional<std::string>& pem) {
  if (!pem || pem->empty()) return {};
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())), BIO_free);
  if (!bio) return {};
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr),
                                                          EVP_PKEY_free);
  if (!key) return {};
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(key.get(), &der);
  if (n <= 0) return {};
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> owned(der, [](unsigned char* p) { OPENSSL_free(p); });
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(der, static_cast<std::size_t>(n), md, &len, EVP_sha256(), nullptr) != 1) return {};
  static constexpr char digits[] = "0123456789abcdef";
  std::string out = "SHA256:";
  for (unsigned int i = 0; i < len; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 15];
  }
  return out;
}

}  // namespace tern::bridge
