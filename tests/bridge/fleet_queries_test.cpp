// The dashboard's reads (fleet_queries.hpp) through Fleet::handle, like any command: devices/page
// (filters, search, paging, counts, bad fields) and deployments/{id}/progress (per-phase counts,
// bytes, failure reasons, equal to a recount of the rows), and the signing key named by artifacts/list.
#include <gtest/gtest.h>

#include "broker-bridge/fleet.hpp"
#include "broker-bridge/fleet_queries.hpp"
#include "broker-bridge/store.hpp"
#include "common/protocol.hpp"
#include "tests/bridge/test_artifact.hpp"
#include "tests/bridge/test_store.hpp"
#include "tests/support/testenv.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace tern::test {
namespace {

namespace json = boost::json;

struct Env {
  TempDir dir{"tern-fleet-queries"};
  std::unique_ptr<bridge::Store> store;
  std::unique_ptr<bridge::Fleet> fleet;
  std::string public_key;

  Env() {
    fs::create_directories(dir / "artifacts");
    const auto r = run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " +
                       shell_quote((dir / "key.pem").string()) + " && openssl pkey -in " +
                       shell_quote((dir / "key.pem").string()) + " -pubout");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    public_key = r.output;
    write_test_artifact(dir / "artifacts", "release-1", std::string(4096, 'x'), read_file(dir / "key.pem"));
    store = bridge::Store::open(test_store(dir.path())).value();
    bridge::FleetOptions o;
    o.artifact_base_url = "https://127.0.0.1:1/artifacts";
    o.artifact_dir = dir / "artifacts";
    o.verify_key_pem = public_key;
    fleet = std::make_unique<bridge::Fleet>(*store, o);
    EXPECT_TRUE(fleet->rescan_artifacts());
  }
  json::object command(const std::string& topic, const std::string& body) {
    mqtt::Message m;
    m.topic = topic;
    m.payload = body;
    m.response_topic = "tern/fleet/replies/t";
    json::object reply;
    for (auto& out : fleet->handle(m, 1000))
      if (out.topic == m.response_topic) reply = json::parse(out.payload).as_object();
    EXPECT_FALSE(reply.empty()) << "no reply to " << topic;
    return reply;
  }
  void device(const std::string& id, const std::string& admission, const std::string& group, bool online) {
    bridge::DeviceRecord d;
    d.id = id;
    d.admission = admission;
    d.group = group;
    d.device_type = "qemu";
    d.presence = online ? "online" : "offline";
    ASSERT_TRUE(store->put_device(d));
  }
  void status(const std::string& dev, const std::string& dep, const std::string& word, std::uint64_t bytes,
              std::uint64_t seq, const std::string& error = "") {
    protocol::StatusEvent e;
    e.deployment_id = dep;
    e.status = protocol::parse_status_word(word).value();
    e.bytes = bytes;
    e.total = 1000;
    e.seq = seq;
    e.error = error;
    mqtt::Message m;
    m.topic = "tern/devices/" + dev + "/status";
    m.payload = protocol::serialize(e);
    fleet->handle(m, 1000);
  }
};

std::vector<std::string> ids(const json::object& reply) {
  std::vector<std::string> out;
  for (auto& d : reply.at("devices").as_array()) out.emplace_back(d.at("id").as_string());
  return out;
}

TEST(FleetQueries, DevicePagesFilterSearchAndCount) {
  Env env;
  for (int i = 0; i < 120; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "dev-%03d", i);
    env.device(id, i % 3 == 0 ? "pending" : "accepted", i < 60 ? "lab" : "field", i % 2 == 0);
  }
  auto first = env.command("tern/fleet/devices/page", R"({"limit":50})");
  ASSERT_TRUE(first.at("ok").as_bool()) << json::serialize(first);
  EXPECT_EQ(first.at("total").as_int64(), 120);
  EXPECT_EQ(first.at("matched").as_int64(), 120);
  EXPECT_EQ(ids(first).size(), 50u);
  EXPECT_EQ(ids(first).front(), "dev-000");
  EXPECT_EQ(first.at("admission").at("pending").as_int64(), 40);
  EXPECT_EQ(first.at("presence").at("online").as_int64(), 60);
  EXPECT_FALSE(first.at("devices").as_array()[0].as_object().contains("inventory")) << "pages stay small";

  auto last = env.command("tern/fleet/devices/page", R"({"offset":100,"limit":50})");
  EXPECT_EQ(ids(last).size(), 20u);
  EXPECT_EQ(ids(last).front(), "dev-100");

  auto pending_field = env.command("tern/fleet/devices/page", R"({"admission":"pending","group":"field","presence":"online"})");
  // i in 60..119, i % 3 == 0 and even: 60, 66, ..., 114.
  EXPECT_EQ(pending_field.at("matched").as_int64(), 10);
  EXPECT_EQ(ids(pending_field).front(), "dev-060");
  EXPECT_EQ(pending_field.at("total").as_int64(), 120) << "counts are over the whole fleet";

  auto search = env.command("tern/fleet/devices/page", R"({"search":"DEV-11"})");
  EXPECT_EQ(ids(search), (std::vector<std::string>{"dev-110", "dev-111", "dev-112", "dev-113", "dev-114", "dev-115",
                                                   "dev-116", "dev-117", "dev-118", "dev-119"}));

  for (const char* bad : {R"({"limit":0})", R"({"limit":501})", R"({"offset":-1})", R"({"colour":"red"})", "[1,2]",
                          R"({"search":7})"}) {
    auto r = env.command("tern/fleet/devices/page", bad);
    EXPECT_FALSE(r.at("ok").as_bool()) << bad;
    EXPECT_NE(std::string(r.at("error").as_string()).find("devices/page"), std::string::npos) << json::serialize(r);
  }
}

TEST(FleetQueries, ProgressPerPhaseWithBytesAndReasons) {
  Env env;
  for (auto id : {"d-1", "d-2", "d-3", "d-4"}) env.device(id, "accepted", "", true);
  auto created = env.command("tern/fleet/deployments/create",
                             R"({"id":"dep","artifact_name":"release-1","all":true,"phases":[50,100]})");
  ASSERT_TRUE(created.at("ok").as_bool()) << json::serialize(created);
  env.status("d-1", "dep", "downloading", 400, 1);
  env.status("d-2", "dep", "downloading", 100, 1);
  env.status("d-2", "dep", "failure", 100, 2, "health check failed");
  auto p = env.command("tern/fleet/deployments/dep/progress", "");
  ASSERT_TRUE(p.at("ok").as_bool()) << json::serialize(p);
  auto& phases = p.at("phases").as_array();
  ASSERT_EQ(phases.size(), 2u);
  auto& one = phases[0].as_object();
  EXPECT_EQ(one.at("percent").as_int64(), 50);
  EXPECT_EQ(one.at("devices").as_int64(), 2);
  EXPECT_EQ(one.at("counts").at("downloading").as_int64(), 1);
  EXPECT_EQ(one.at("counts").at("failure").as_int64(), 1);
  EXPECT_EQ(one.at("bytes").as_int64(), 500);
  EXPECT_EQ(one.at("total_bytes").as_int64(), 2000);
  auto& two = phases[1].as_object();
  EXPECT_EQ(two.at("devices").as_int64(), 2);
  EXPECT_EQ(two.at("counts").at("pending").as_int64(), 2) << "the second phase has not started";
  auto& failures = p.at("failures").as_array();
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0].at("device").as_string(), "d-2");
  EXPECT_EQ(failures[0].at("error").as_string(), "health check failed");
  EXPECT_EQ(failures[0].at("phase").as_int64(), 1);

  auto unknown = env.command("tern/fleet/deployments/nope/progress", "");
  EXPECT_FALSE(unknown.at("ok").as_bool());
  EXPECT_NE(std::string(unknown.at("error").as_string()).find("'nope'"), std::string::npos);
}

// deployments/{id}/progress as it was computed before the counters: a scan of every row of the
// deployment (the reference the counter-based answer must equal).
json::object recounted_progress(bridge::Store& store, const std::string& id) {
  const auto d = store.deployment(id).value().value();
  struct Phase {
    json::object counts;
    std::uint64_t devices = 0, bytes = 0, total = 0;
  };
  std::vector<Phase> phases(d.phases.size());
  json::array failures;
  std::uint64_t failed = 0;
  for (auto& r : store.device_deployments(id).value()) {
    if (static_cast<std::size_t>(r.phase) >= phases.size()) phases.resize(static_cast<std::size_t>(r.phase) + 1);
    auto& p = phases[static_cast<std::size_t>(r.phase)];
    ++p.devices;
    auto& c = p.counts[r.status];
    c = c.is_null() ? std::int64_t{1} : c.as_int64() + 1;
    p.total += r.total;
    const bool downloaded = r.status == "installing" || r.status == "rebooting" || r.status == "success";
    p.bytes += downloaded ? std::max(r.bytes, r.total) : r.bytes;
    if (r.status == "failure" || r.status == "aborted") {
      ++failed;
      if (failures.size() < 1000)
        failures.push_back(json::object{{"device", r.device}, {"status", r.status}, {"error", r.error},
                                        {"attempt", r.attempt}, {"phase", r.phase + 1}, {"updated", r.updated}});
    }
  }
  json::array out;
  for (std::size_t i = 0; i < phases.size(); ++i)
    out.push_back(json::object{{"phase", i + 1}, {"percent", i < d.phases.size() ? d.phases[i] : 100},
                               {"devices", phases[i].devices}, {"counts", phases[i].counts},
                               {"bytes", phases[i].bytes}, {"total_bytes", phases[i].total}});
  return json::object{{"id", id}, {"state", d.state}, {"phase", d.phase + 1}, {"phases", std::move(out)},
                      {"failures", std::move(failures)}, {"failure_count", failed}};
}

// The progress comes from the counters, one aggregate of the bytes and the listed failure rows
// only: it must equal a recount of every row, over phases and statuses of every kind, with more
// failures than are listed, beside another deployment whose rows must not leak in.
TEST(FleetQueries, ProgressEqualsARecountOfTheRows) {
  Env env;
  for (const char* id : {"big", "other"}) {
    bridge::DeploymentRecord d;
    d.id = id;
    d.artifact = "release-1";
    d.targets = R"({"all":true})";
    d.phases = {10, 40, 100};
    d.state = "running";
    d.phase = 1;
    d.created = 1000;
    ASSERT_TRUE(env.store->insert_deployment(d));
  }
  const std::vector<std::string> words{"pending",  "sent",    "downloading", "installing", "rebooting",
                                       "success",  "failure", "aborted",     "already-installed"};
  std::vector<bridge::DeviceDeploymentRecord> rows;
  for (int i = 0; i < 1500; ++i) {
    bridge::DeviceDeploymentRecord r;
    r.deployment = "big";
    r.device = "dev-" + std::to_string(i * 7919 % 1500);  // not in phase order
    r.phase = i % 4;  // phase 4 is past the deployment's three: still listed, like the rows' scan did
    // Mostly failures (more than the 1000 listed), every other status in every phase.
    r.status = i % 3 == 0 ? words[static_cast<std::size_t>(i / 3) % words.size()] : (i % 2 ? "failure" : "aborted");
    r.total = 1000 + static_cast<std::uint64_t>(i);
    r.bytes = static_cast<std::uint64_t>(i * 37 % 1400);  // below and above the total
    r.attempt = 1 + i % 2;
    r.error = r.status == "failure" ? "error " + std::to_string(i) : "";
    r.updated = 1000 + i;
    rows.push_back(std::move(r));
  }
  ASSERT_TRUE(env.store->put_device_deployments(rows));
  auto others = rows;
  for (auto& r : others) {
    r.deployment = "other";
    r.status = "failure";
    r.bytes = 5;
  }
  ASSERT_TRUE(env.store->put_device_deployments(others));

  auto check = [&](const std::string& when) {
    auto got = bridge::deployment_progress(*env.store, "big");
    ASSERT_TRUE(got) << got.error().message();
    const auto want = recounted_progress(*env.store, "big");
    EXPECT_EQ(json::value(*got), json::value(want)) << when << "\ngot:  " << json::serialize(*got).substr(0, 2000)
                                                     << "\nwant: " << json::serialize(want).substr(0, 2000);
    EXPECT_EQ(got->at("failures").as_array().size(), 1000u) << when;
    EXPECT_EQ(got->at("phases").as_array().size(), 4u) << when;
  };
  check("as written");
  EXPECT_GT(recounted_progress(*env.store, "big").at("failure_count").as_uint64(), 1000u);

  // Rows move between statuses (the counters follow through the triggers): still equal.
  for (auto& r : rows) {
    if (r.status == "failure" && r.updated % 5 == 0) r.status = "success";
    r.bytes = r.updated % 3 ? 10 : 0;
  }
  rows.resize(700);
  ASSERT_TRUE(env.store->put_device_deployments(rows));
  check("after updates");
}

TEST(FleetQueries, ArtifactListNamesTheSigningKey) {
  Env env;
  auto list = env.command("tern/fleet/artifacts/list", "");
  ASSERT_TRUE(list.at("ok").as_bool()) << json::serialize(list);
  auto& a = list.at("artifacts").as_array().at(0).as_object();
  EXPECT_TRUE(a.at("signed").as_bool());
  // The same fingerprint as the openssl CLI's.
  const auto r = run("openssl pkey -in " + shell_quote((env.dir / "key.pem").string()) +
                     " -pubout -outform DER | sha256sum | cut -d' ' -f1");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(a.at("signed_by").as_string(), "SHA256:" + r.output.substr(0, 64));
  EXPECT_EQ(bridge::public_key_fingerprint(std::string("not a key")), "");
}

}  // namespace
}  // namespace tern::test
