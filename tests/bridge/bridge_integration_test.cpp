// tern-bridge as a process on the real broker. Operators are played by mosquitto_rr (MQTT 5
// response topic + correlation data) and mosquitto_pub/sub with the operator certificate, devices
// by mosquitto_pub with their own certificates.
#include <gtest/gtest.h>

#include "common/protocol.hpp"
#include "tests/bridge/test_artifact.hpp"
#include "tests/bridge/test_store.hpp"
#include "tests/support/broker.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

namespace tern::test {
namespace {

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string status_json(const std::string& dep, const std::string& word, std::uint64_t seq,
                        const std::string& error = "") {
  protocol::StatusEvent e;
  e.deployment_id = dep;
  e.status = protocol::parse_status_word(word).value();
  e.seq = seq;
  e.error = error;
  return protocol::serialize(e);
}

class BridgeProcess {
 public:
  Broker broker;
  TempDir dir{"tern-bridge-it"};

  explicit BridgeProcess(bool start_now = true) {
    fs::create_directories(dir / "artifacts");
    make_artifact("release-1");
    write_file(dir / "bridge.conf",
               "{\"broker_uri\":\"" + broker.services_uri() + "\",\"ca_file\":\"" + (certs() / "ca.crt").string() +
                   "\",\"cert_file\":\"" + (certs() / "bridge.crt").string() + "\",\"key_file\":\"" +
                   (certs() / "bridge.key").string() + "\",\"db\":\"" + test_store(dir.path()) +
                   "\",\"artifact_dir\":\"" + (dir / "artifacts").string() +
                   "\",\"server_bind\":\"127.0.0.1\",\"server_port\":0,\"server_cert\":\"" +
                   (certs() / "server.crt").string() + "\",\"server_key\":\"" + (certs() / "server.key").string() +
                   "\",\"log_level\":\"debug\"}");
    if (start_now) start();
  }
  ~BridgeProcess() {
    if (process_ && process_->running()) process_->stop(15, 10s);
    if (::testing::Test::HasFailure()) std::cerr << "---- tern-bridge log ----\n" << log() << "----\n";
  }

  void make_artifact(const std::string& name) {
    write_test_artifact(dir / "artifacts", name, std::string(100000, 'y') + name);
  }

  std::string log() const {
    try {
      return read_file(dir / "bridge.log");
    } catch (const std::exception&) {
      return "(no log)";
    }
  }

  // Starts tern-bridge and waits (polling its log, with a deadline) until it has subscribed.
  void start() {
    auto count = [&] {
      auto text = log();
      std::size_t n = 0;
      for (auto p = text.find("ready:"); p != std::string::npos; p = text.find("ready:", p + 1)) ++n;
      return n;
    };
    auto before = count();
    process_ = std::make_unique<Process>(
        std::vector<std::string>{(build_dir() / "broker-bridge/tern-bridge").string(), "--config",
                                 (dir / "bridge.conf").string()},
        dir / "bridge.log");
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (count() == before) {
      if (!process_->running() || std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error("tern-bridge did not become ready:\n" + log());
      std::this_thread::sleep_for(50ms);
    }
  }
  void kill() { process_->kill(); }
  int stop() { return process_->stop(15, 10s); }

  /// A command through mosquitto_rr; returns the reply (or the tool's error output).
  std::string rr(const std::string& topic, const std::string& body) {
    auto r = run("mosquitto_rr " + broker.client_args("operator") + " -q 1 -t " + shell_quote(topic) +
                 " -e tern/fleet/replies/it -W 10 -m " + shell_quote(body) + " 2>&1");
    return trim(r.output);
  }
  void accept(const std::string& id) {
    auto r = rr("tern/fleet/devices/" + id + "/accept", "{}");
    ASSERT_NE(r.find("\"ok\":true"), std::string::npos) << r;
  }
  void device_pub(const std::string& id, const std::string& kind, const std::string& payload,
                  bool retain = false) {
    auto r = run("mosquitto_pub " + broker.client_args(id) + " -q 1 " + (retain ? "-r " : "") + "-t tern/devices/" +
                 id + "/" + kind + " -m " + shell_quote(payload) + " 2>&1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  void status(const std::string& id, const std::string& dep, const std::string& word, std::uint64_t seq,
              const std::string& error = "") {
    device_pub(id, "status", status_json(dep, word, seq, error));
  }
  /// The retained message on `topic`, or nullopt if there is none (empty payloads clear).
  std::optional<std::string> retained(const std::string& topic) {
    auto r = run("mosquitto_sub " + broker.client_args("operator") + " -t " + shell_quote(topic) +
                 " -C 1 -W 2 --retained-only 2>/dev/null");
    if (r.exit_code != 0) return std::nullopt;
    return trim(r.output);
  }
  /// Polls the retained summary of `dep` until it contains every needle; returns the last one seen.
  std::string wait_summary(const std::string& dep, const std::vector<std::string>& needles,
                           std::chrono::seconds within = 20s) {
    auto deadline = std::chrono::steady_clock::now() + within;
    std::string last;
    while (std::chrono::steady_clock::now() < deadline) {
      last = retained("tern/fleet/deployments/" + dep).value_or("");
      bool all = true;
      for (auto& n : needles) all = all && last.find(n) != std::string::npos;
      if (all) return last;
      std::this_thread::sleep_for(100ms);
    }
    std::string want;
    for (auto& n : needles) want += " " + n;
    ADD_FAILURE() << "summary of " << dep << " never contained" << want << "; last: " << last;
    return last;
  }
  std::string wait_summary(const std::string& dep, const std::string& needle) {
    return wait_summary(dep, std::vector<std::string>{needle});
  }

 private:
  std::unique_ptr<Process> process_;
};

TEST(BridgeIntegration, CreateForThreeDevicesWithMosquittoRr) {
  BridgeProcess b;
  for (auto id : {"device-1", "device-2", "device-3"}) b.accept(id);
  auto reply = b.rr("tern/fleet/deployments/create",
                    R"({"id":"d1","artifact_name":"release-1","devices":["device-1","device-2","device-3"]})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  for (auto id : {"device-1", "device-2", "device-3"}) {
    auto m = b.retained(protocol::topics::deployment(id));
    ASSERT_TRUE(m) << id;
    auto dep = protocol::parse_deployment(*m);
    ASSERT_TRUE(dep) << *m;
    EXPECT_EQ(dep->deployment_id, "d1");
    EXPECT_EQ(dep->artifact_name, "release-1");
    if (std::string(id) == "device-1") {
      // The URL works: the bridge's own server hands out the same bytes the checksum names.
      auto got = run("curl -sf --cacert " + shell_quote((certs() / "ca.crt").string()) + " " +
                     shell_quote(dep->url) + " | sha256sum");
      EXPECT_EQ(got.output.substr(0, 64), dep->sha256) << got.output;
    }
  }
  b.wait_summary("d1", "\"total\":3");
  for (auto id : {"device-1", "device-2", "device-3"}) {
    b.status(id, "d1", "downloading", 1);
    b.status(id, "d1", "success", 2);
  }
  auto s = b.wait_summary("d1", "\"state\":\"finished\"");
  EXPECT_NE(s.find("\"success\":3"), std::string::npos) << s;
  for (auto id : {"device-1", "device-2", "device-3"})
    EXPECT_FALSE(b.retained(protocol::topics::deployment(id))) << id << " still has a deployment";
  auto rec = b.retained("tern/fleet/devices/device-1");
  ASSERT_TRUE(rec);
  EXPECT_NE(rec->find("\"artifact_name\":\"release-1\""), std::string::npos) << *rec;
}

TEST(BridgeIntegration, PhasedRolloutPausesWhenAFailureCrossesTheThreshold) {
  BridgeProcess b;
  for (auto id : {"device-1", "device-2", "device-3", "device-4"}) b.accept(id);
  auto reply = b.rr("tern/fleet/deployments/create",
                    R"({"id":"p1","artifact_name":"release-1","all":true,"phases":[50,100],"failure_threshold":40})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_TRUE(b.retained(protocol::topics::deployment("device-1")));
  EXPECT_TRUE(b.retained(protocol::topics::deployment("device-2")));
  EXPECT_FALSE(b.retained(protocol::topics::deployment("device-3")));
  b.status("device-1", "p1", "success", 1);
  b.status("device-2", "p1", "failure", 1, "bad block");
  auto s = b.wait_summary("p1", "\"state\":\"paused\"");
  EXPECT_NE(s.find("bad block"), std::string::npos) << s;
  EXPECT_NE(s.find("over the failure threshold"), std::string::npos) << s;
  EXPECT_FALSE(b.retained(protocol::topics::deployment("device-3")));
  EXPECT_FALSE(b.retained(protocol::topics::deployment("device-4")));
}

TEST(BridgeIntegration, AbortClearsRetainedDeployments) {
  BridgeProcess b;
  for (auto id : {"device-1", "device-2"}) b.accept(id);
  auto reply = b.rr("tern/fleet/deployments/create", R"({"id":"a1","artifact_name":"release-1","all":true})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  ASSERT_TRUE(b.retained(protocol::topics::deployment("device-1")));
  b.status("device-1", "a1", "downloading", 1);
  reply = b.rr("tern/fleet/deployments/a1/abort", "{}");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_FALSE(b.retained(protocol::topics::deployment("device-1")));
  EXPECT_FALSE(b.retained(protocol::topics::deployment("device-2")));
  b.wait_summary("a1", "\"state\":\"aborted\"");
}

TEST(BridgeIntegration, DuplicateAndOutOfOrderStatusesDoNotDoubleCount) {
  BridgeProcess b;
  for (auto id : {"device-1", "device-2"}) b.accept(id);
  auto reply = b.rr("tern/fleet/deployments/create", R"({"id":"q1","artifact_name":"release-1","all":true})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  b.status("device-1", "q1", "installing", 5);
  b.status("device-1", "q1", "installing", 5);
  b.status("device-1", "q1", "downloading", 3);  // older, arrives late
  b.status("device-2", "q1", "downloading", 1);
  auto s = b.wait_summary("q1", std::vector<std::string>{"\"installing\":1", "\"downloading\":1"});
  EXPECT_EQ(s.find("\"sent\""), std::string::npos) << s;
  b.status("device-1", "q1", "success", 6);
  b.status("device-1", "q1", "success", 6);
  b.status("device-2", "q1", "success", 2);
  s = b.wait_summary("q1", std::vector<std::string>{"\"state\":\"finished\"", "\"success\":2"});
  EXPECT_NE(s.find("\"total\":2"), std::string::npos) << s;
}

// A device's statuses arriving a few ms apart would each be a store transaction of their own;
// with batch_interval_ms the batches handed to the store are at least that far apart, whatever the
// machine's load (so at most 1 + elapsed / interval of them), and every status is still ingested.
TEST(BridgeIntegration, ContinuousStatusesReachTheStoreInPacedBatches) {
  BridgeProcess b(false);
  auto conf = read_file(b.dir / "bridge.conf");
  conf.replace(conf.rfind('}'), 1, ",\"batch_interval_ms\":100}");
  write_file(b.dir / "bridge.conf", conf);
  const auto started = std::chrono::steady_clock::now();
  b.start();
  b.accept("device-1");
  auto reply = b.rr("tern/fleet/deployments/create", R"({"id":"p1","artifact_name":"release-1","all":true})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  // 200 progress statuses through one session, about 5 ms apart, then the success.
  std::string line = status_json("p1", "downloading", 987654321);
  line.replace(line.find("987654321"), 9, "%d");
  auto r = run("for i in $(seq 1 200); do printf " + shell_quote(line + "\n") +
               " $i; sleep 0.005; done | mosquitto_pub " + b.broker.client_args("device-1") +
               " -q 1 -t tern/devices/device-1/status -l 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  b.status("device-1", "p1", "success", 201);
  b.wait_summary("p1", std::vector<std::string>{"\"success\":1", "\"state\":\"finished\""});
  ASSERT_EQ(b.stop(), 0);
  const auto elapsed = std::chrono::steady_clock::now() - started;
  // Every message was taken, in few batches.
  const auto log = b.log();
  const auto at = log.find("stopped after ");
  ASSERT_NE(at, std::string::npos) << log;
  unsigned long messages = 0, batches = 0;
  ASSERT_EQ(std::sscanf(log.c_str() + at, "stopped after %lu messages in %lu batches", &messages, &batches), 2)
      << log.substr(at, 80);
  EXPECT_GE(messages, 203u);  // accept, create, 201 statuses (and the retained messages of the start)
  const auto bound = 1 + static_cast<unsigned long>(elapsed / std::chrono::milliseconds(100));
  EXPECT_LE(batches, bound) << messages << " messages in " << batches << " batches over "
                            << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms";
  EXPECT_LT(batches, 100u);
}

TEST(BridgeIntegration, DevicesNotAcceptedGetNothing) {
  BridgeProcess b;
  b.accept("device-1");
  b.device_pub("device-2", "inventory", R"({"device_type":"qemu"})");  // appears pending
  auto rec = std::optional<std::string>{};
  // Wait for the record that says pending (an earlier, partial one may be retained first).
  for (int i = 0; i < 100; ++i) {
    rec = b.retained("tern/fleet/devices/device-2");
    if (rec && rec->find("\"admission\":\"pending\"") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(rec);
  EXPECT_NE(rec->find("\"admission\":\"pending\""), std::string::npos) << *rec;
  auto reply = b.rr("tern/fleet/deployments/create", R"({"id":"n1","artifact_name":"release-1","all":true})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_NE(reply.find("not accepted (pending)"), std::string::npos) << reply;
  EXPECT_TRUE(b.retained(protocol::topics::deployment("device-1")));
  EXPECT_FALSE(b.retained(protocol::topics::deployment("device-2")));
  reply = b.rr("tern/fleet/devices/device-2/reject", "{}");
  EXPECT_NE(reply.find("\"admission\":\"rejected\""), std::string::npos) << reply;
}

TEST(BridgeIntegration, DevicesThatAnnouncedThemselvesBeforeTheFirstStartAreKnown) {
  BridgeProcess b(false);
  b.device_pub("device-4", "inventory", R"({"device_type":"qemu","artifact_name":"factory"})", true);
  b.device_pub("device-4", "presence", R"({"state":"online","seq":3})", true);
  b.start();
  std::optional<std::string> rec;
  for (int i = 0; i < 50; ++i) {
    rec = b.retained("tern/fleet/devices/device-4");
    if (rec && rec->find("\"presence\":\"online\"") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(rec);
  EXPECT_NE(rec->find("\"admission\":\"pending\""), std::string::npos) << *rec;
  EXPECT_NE(rec->find("\"device_type\":\"qemu\""), std::string::npos) << *rec;
  EXPECT_NE(rec->find("\"artifact_name\":\"factory\""), std::string::npos) << *rec;
  EXPECT_NE(rec->find("\"presence\":\"online\""), std::string::npos) << *rec;
}

TEST(BridgeIntegration, KilledMidRolloutRestartsConsistentAndContinues) {
  BridgeProcess b;
  for (auto id : {"device-1", "device-2", "device-3"}) b.accept(id);
  auto reply = b.rr("tern/fleet/deployments/create",
                    R"({"id":"k1","artifact_name":"release-1","all":true,"phases":[30,100]})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  b.status("device-1", "k1", "downloading", 1);
  b.wait_summary("k1", "\"downloading\":1");
  b.kill();
  // While the bridge is dead: the first phase finishes; its session keeps the statuses.
  b.status("device-1", "k1", "downloading", 1);  // a duplicate of one it already has
  b.status("device-1", "k1", "success", 2);
  b.start();
  auto s = b.wait_summary("k1", "\"phase\":2");
  EXPECT_NE(s.find("\"success\":1"), std::string::npos) << s;
  EXPECT_TRUE(b.retained(protocol::topics::deployment("device-2")));
  EXPECT_TRUE(b.retained(protocol::topics::deployment("device-3")));
  b.kill();
  b.start();  // a second restart republishes, idempotently
  b.status("device-2", "k1", "success", 1);
  b.status("device-3", "k1", "success", 1);
  s = b.wait_summary("k1", "\"state\":\"finished\"");
  EXPECT_NE(s.find("\"success\":3"), std::string::npos) << s;
  EXPECT_NE(s.find("\"total\":3"), std::string::npos) << s;
  EXPECT_EQ(b.stop(), 0);
}

TEST(BridgeIntegration, InvalidCommandsGetErrorRepliesNamingTheProblem) {
  BridgeProcess b;
  b.accept("device-1");
  auto reply = b.rr("tern/fleet/deployments/create", "{oops");
  EXPECT_NE(reply.find("\"ok\":false"), std::string::npos) << reply;
  EXPECT_NE(reply.find("not valid JSON"), std::string::npos) << reply;
  reply = b.rr("tern/fleet/deployments/create", R"({"artifact_name":"release-9","all":true})");
  EXPECT_NE(reply.find("unknown artifact 'release-9'"), std::string::npos) << reply;
  reply = b.rr("tern/fleet/deployments/create", R"({"artifact_name":"release-1","group":"nobody"})");
  EXPECT_NE(reply.find("target set is empty"), std::string::npos) << reply;
  reply = b.rr("tern/fleet/deployments/nope/abort", "{}");
  EXPECT_NE(reply.find("unknown deployment 'nope'"), std::string::npos) << reply;
  // Nothing was created by any of them.
  reply = b.rr("tern/fleet/deployments/list", "{}");
  EXPECT_NE(reply.find("\"deployments\":[]"), std::string::npos) << reply;
  EXPECT_FALSE(b.retained(protocol::topics::deployment("device-1")));

}

}  // namespace
}  // namespace tern::test

namespace tern::test {
namespace {

TEST(BridgeIntegration, OperatorScripts) {
  BridgeProcess b;
  const std::string conn = " --host 127.0.0.1 --port " + std::to_string(b.broker.services_port()) + " --certs " +
                           shell_quote(certs().string()) + " ";
  const std::string fleet = shell_quote((source_dir() / "scripts/tern-fleet").string()) + conn;
  const std::string deploy = shell_quote((source_dir() / "scripts/tern-deploy").string()) + conn;
  auto r = run(fleet + "accept device-1 lab 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"group\":\"lab\""), std::string::npos) << r.output;
  r = run(deploy + "release-1 --group lab --id s1 --phases 100 --retries 1 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"devices\":1"), std::string::npos) << r.output;
  EXPECT_TRUE(b.retained(protocol::topics::deployment("device-1")));
  r = run(deploy + "release-7 --all 2>&1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("unknown artifact 'release-7'"), std::string::npos) << r.output;
  r = run(deploy + "release-1 2>&1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = run(fleet + "abort s1 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run(fleet + "summary s1 2>&1");
  EXPECT_NE(r.output.find("\"state\":\"aborted\""), std::string::npos) << r.output;
  EXPECT_FALSE(b.retained(protocol::topics::deployment("device-1")));
  r = run(fleet + "artifacts 2>&1");
  EXPECT_NE(r.output.find("\"name\":\"release-1\""), std::string::npos) << r.output;
}

}  // namespace
}  // namespace tern::test

namespace tern::test {
namespace {

// Operators share identities and run clients side by side: a watcher (mosquitto_sub on the
// replies) with the shared operator certificate stays connected while 20 tern-fleet commands run
// at once, half with that certificate and half with alice's own; every command gets its reply and
// the watcher sees all 20 replies. The broker log names who connected.
TEST(BridgeIntegration, WatcherAndTwentyConcurrentOperatorCommandsLoseNothing) {
  auto made = run(shell_quote((source_dir() / "scripts/gen-certs").string()) + " " + shell_quote(certs().string()) +
                  " --devices 0 --operators alice 2>&1");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  BridgeProcess b;
  Process watcher({"sh", "-c", "exec mosquitto_sub " + b.broker.client_args("operator") +
                                   " -q 1 -v -t 'tern/fleet/replies/#'"},
                  b.dir / "watcher.log");
  bool ready = false;
  for (int i = 0; i < 100 && !ready; ++i) {
    run("mosquitto_pub " + b.broker.client_args("operator-alice") + " -q 1 -t tern/fleet/replies/probe -m p");
    std::this_thread::sleep_for(100ms);
    ready = watcher.log().find("tern/fleet/replies/probe p") != std::string::npos;
  }
  ASSERT_TRUE(ready) << watcher.log();

  const std::string conn = " --host 127.0.0.1 --port " + std::to_string(b.broker.services_port()) + " --certs " +
                           shell_quote(certs().string()) + " ";
  const std::string fleet = shell_quote((source_dir() / "scripts/tern-fleet").string()) + conn;
  std::string batch;
  for (int i = 1; i <= 20; ++i)
    batch += fleet + (i % 2 ? "--operator alice " : "") + "devices > " + shell_quote((b.dir / ("cmd" + std::to_string(i))).string()) +
             " 2>&1 & pids=\"$pids $!\"; ";
  auto r = run(batch + "fails=0; for p in $pids; do wait $p || fails=$((fails+1)); done; echo fails=$fails");
  EXPECT_NE(r.output.find("fails=0"), std::string::npos) << r.output;
  for (int i = 1; i <= 20; ++i) {
    auto out = read_file(b.dir / ("cmd" + std::to_string(i)));
    EXPECT_NE(out.find("\"ok\":true"), std::string::npos) << "command " << i << ": " << out;
  }
  int replies = 0;
  for (int i = 0; i < 100; ++i) {
    auto log = watcher.log();
    replies = 0;
    for (auto p = log.find("\"ok\":true"); p != std::string::npos; p = log.find("\"ok\":true", p + 1)) ++replies;
    if (replies >= 20) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(replies, 20) << watcher.log();
  EXPECT_TRUE(watcher.running());
  auto blog = b.broker.log();
  EXPECT_EQ(blog.find("already connected, closing old connection"), std::string::npos) << blog;
  EXPECT_NE(blog.find("u'alice')"), std::string::npos) << blog;
  EXPECT_NE(blog.find("u'tern-operator')"), std::string::npos) << blog;
}

}  // namespace
}  // namespace tern::test

namespace tern::test {
namespace {

// Admission before the device exists, then retirement: preauthorized devices are accepted from
// their first message and can be targeted before it; decommission leaves nothing retained.
TEST(BridgeIntegration, PreauthorizedDeviceIsAcceptedAndDecommissionClearsItsRetainedState) {
  BridgeProcess b;
  const std::string fleet = shell_quote((source_dir() / "scripts/tern-fleet").string()) + " --host 127.0.0.1 --port " +
                            std::to_string(b.broker.services_port()) + " --certs " + shell_quote(certs().string()) + " ";
  auto r = run(fleet + "preauthorize field device-2 device-3 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"devices\":[\"device-2\",\"device-3\"]"), std::string::npos) << r.output;
  r = run(fleet + "preauthorize field device-4 'no good' 2>&1");
  EXPECT_EQ(r.exit_code, 2) << r.output;  // refused by the script before sending
  // Targeted before either device was ever seen.
  auto reply = b.rr("tern/fleet/deployments/create", R"({"id":"pa1","artifact_name":"release-1","group":"field"})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  EXPECT_NE(reply.find("\"devices\":2"), std::string::npos) << reply;
  // The devices appear: accepted from their first message.
  b.device_pub("device-3", "inventory", R"({"device_type":"qemu","artifact_name":"factory"})", true);
  b.device_pub("device-3", "presence", R"({"state":"online","seq":1})", true);
  std::optional<std::string> rec;
  for (int i = 0; i < 100; ++i) {
    rec = b.retained("tern/fleet/devices/device-3");
    if (rec && rec->find("\"presence\":\"online\"") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(rec);
  EXPECT_NE(rec->find("\"admission\":\"accepted\""), std::string::npos) << *rec;
  EXPECT_NE(rec->find("\"group\":\"field\""), std::string::npos) << *rec;
  ASSERT_TRUE(b.retained(protocol::topics::deployment("device-3")));
  // Retired: its retained deployment, inventory and presence are gone from the broker.
  r = run(fleet + "decommission device-3 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* kind : {"deployment", "inventory", "presence"}) {
    auto m = b.retained(std::string("tern/devices/device-3/") + kind);
    EXPECT_FALSE(m) << kind << ": " << m.value_or("");
  }
  rec = b.retained("tern/fleet/devices/device-3");
  ASSERT_TRUE(rec);
  EXPECT_NE(rec->find("\"admission\":\"decommissioned\""), std::string::npos) << *rec;
}

}  // namespace
}  // namespace tern::test

namespace tern::test {
namespace {

// Several bridges on one broker and one PostgreSQL: shared subscriptions split the device traffic
// and the commands between them; each command is answered once; a rollout goes on when one bridge
// is killed with -9 in the middle of it, with every status counted once.
TEST(BridgeIntegration, TwoBridgesShareTheWorkAndOneSurvivesTheOthersKill) {
  if (!test_store_is_postgres()) GTEST_SKIP() << "PostgreSQL only: runs as pg.BridgeIntegration.*";
  Broker broker;
  TempDir dir{"tern-bridges"};
  fs::create_directories(dir / "artifacts");
  write_test_artifact(dir / "artifacts", "release-1", std::string(100000, 'y'));
  const std::string db = test_store(dir.path());
  std::vector<std::unique_ptr<Process>> bridges;
  auto start_bridge = [&](int n) {
    auto conf = dir / ("bridge-" + std::to_string(n) + ".conf");
    boost::json::object cfg{{"broker_uri", broker.services_uri()},
                            {"client_id", "tern-bridge-" + std::to_string(n)},
                            {"ca_file", (certs() / "ca.crt").string()},
                            {"cert_file", (certs() / "bridge.crt").string()},
                            {"key_file", (certs() / "bridge.key").string()},
                            {"db", db},
                            {"artifact_dir", (dir / "artifacts").string()},
                            {"server_bind", "127.0.0.1"},
                            {"server_port", 0},
                            {"server_cert", (certs() / "server.crt").string()},
                            {"server_key", (certs() / "server.key").string()},
                            {"shared_group", "tern-bridge"},
                            {"retained_device_state", false},
                            {"log_level", "debug"}};
    write_file(conf, boost::json::serialize(cfg));
    auto log = dir / ("bridge-" + std::to_string(n) + ".log");
    bridges.push_back(std::make_unique<Process>(
        std::vector<std::string>{(build_dir() / "broker-bridge/tern-bridge").string(), "--config", conf.string()}, log));
    for (int i = 0; i < 300; ++i) {
      std::string text;
      try {
        text = read_file(log);
      } catch (const std::exception&) {
      }
      if (text.find("ready:") != std::string::npos) return;
      std::this_thread::sleep_for(50ms);
    }
    FAIL() << "bridge " << n << " not ready:\n" << read_file(log);
  };
  start_bridge(1);
  start_bridge(2);
  auto dump_logs = [&] {
    std::string all;
    for (int n : {1, 2}) {
      try {
        all += "---- bridge-" + std::to_string(n) + "\n" + read_file(dir / ("bridge-" + std::to_string(n) + ".log"));
      } catch (const std::exception&) {
      }
    }
    return all;
  };

  // Commands: answered once each, whichever bridge takes them.
  Process watcher({"sh", "-c", "exec mosquitto_sub " + broker.client_args("operator") + " -q 1 -v -t 'tern/fleet/replies/#'"},
                  dir / "watcher.log");
  bool ready = false;
  for (int i = 0; i < 100 && !ready; ++i) {
    run("mosquitto_pub " + broker.client_args("operator") + " -q 1 -t tern/fleet/replies/probe -m p");
    std::this_thread::sleep_for(100ms);
    ready = watcher.log().find("tern/fleet/replies/probe p") != std::string::npos;
  }
  ASSERT_TRUE(ready) << watcher.log();
  auto rr = [&](const std::string& topic, const std::string& body) {
    auto r = run("mosquitto_rr " + broker.client_args("operator") + " -q 1 -t " + shell_quote(topic) +
                 " -e tern/fleet/replies/two -W 10 -m " + shell_quote(body) + " 2>&1");
    return r.output;
  };
  auto reply = rr("tern/fleet/devices/preauthorize", R"({"devices":["device-1","device-2","device-3","device-4","device-5"]})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply << dump_logs();
  reply = rr("tern/fleet/deployments/create", R"({"id":"m1","artifact_name":"release-1","all":true,"phases":[40,100]})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply << dump_logs();
  for (int i = 0; i < 50; ++i) {
    auto log = watcher.log();
    if (log.find("tern/fleet/replies/two") != std::string::npos &&
        log.find("deployments") != std::string::npos)
      break;
    std::this_thread::sleep_for(50ms);
  }
  std::this_thread::sleep_for(500ms);  // a duplicate reply would have arrived by now
  auto wlog = watcher.log();
  int replies = 0;
  for (auto p = wlog.find("tern/fleet/replies/two "); p != std::string::npos; p = wlog.find("tern/fleet/replies/two ", p + 1))
    ++replies;
  EXPECT_EQ(replies, 2) << wlog;

  auto status = [&](const std::string& id, const std::string& word, std::uint64_t seq) {
    auto r = run("mosquitto_pub " + broker.client_args(id) + " -q 1 -t tern/devices/" + id + "/status -m " +
                 shell_quote(status_json("m1", word, seq)) + " 2>&1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  };
  auto summary = [&] {
    auto r = run("mosquitto_sub " + broker.client_args("operator") + " -t tern/fleet/deployments/m1 -C 1 -W 2 --retained-only 2>/dev/null");
    return r.output;
  };
  auto wait_summary = [&](const std::string& needle) {
    std::string last;
    for (int i = 0; i < 200; ++i) {
      last = summary();
      if (last.find(needle) != std::string::npos) return last;
      std::this_thread::sleep_for(100ms);
    }
    ADD_FAILURE() << "summary never had " << needle << "; last: " << last << dump_logs();
    return last;
  };
  // Phase 1 (2 devices of 5): both succeed, phase 2 starts.
  status("device-1", "downloading", 1);
  status("device-2", "downloading", 1);
  status("device-1", "success", 2);
  status("device-2", "success", 2);
  wait_summary("\"phase\":2");
  // Bridge 1 dies mid-rollout; bridge 2 carries on alone.
  bridges[0]->kill();
  for (auto id : {"device-3", "device-4", "device-5"}) {
    status(id, "downloading", 1);
    status(id, "downloading", 1);  // a duplicate (QoS 1 redelivery)
    status(id, "success", 2);
  }
  auto s = wait_summary("\"state\":\"finished\"");
  EXPECT_NE(s.find("\"success\":5"), std::string::npos) << s;
  EXPECT_NE(s.find("\"total\":5"), std::string::npos) << s;
  // Every status recorded once: no seq of a device twice in the history.
  const auto name = db.substr(db.rfind('/') + 1);
  auto dups = Postgres::shared().psql(name, "SELECT device, seq, count(*) FROM history GROUP BY device, seq HAVING count(*) > 1");
  EXPECT_EQ(dups, "") << dups;
  auto count = Postgres::shared().psql(name, "SELECT count(*) FROM history WHERE deployment = 'm1'");
  EXPECT_EQ(count.substr(0, count.find('\n')), "10") << count;
  // Both bridges took statuses before the kill (the shared subscription split the work).
  auto log1 = read_file(dir / "bridge-1.log"), log2 = read_file(dir / "bridge-2.log");
  EXPECT_NE(log1.find("status of device-"), std::string::npos) << "bridge 1 got no status:\n" << dump_logs();
  EXPECT_NE(log2.find("status of device-"), std::string::npos) << "bridge 2 got no status:\n" << dump_logs();
  if (HasFailure()) std::cerr << dump_logs() << broker.log();
}


// Mosquitto 2.0.11 delivers nothing to a shared subscription while no bridge is subscribed (after a
// broker restart, until the bridges are back): statuses published then are lost on their way to
// the bridges. Devices publish statuses retained, and each bridge reconciles on every reconnection,
// so the store still converges on what every device last reported.
TEST(BridgeIntegration, TwoBridgesConvergeOnStatusesLostInABrokerRestart) {
  if (!test_store_is_postgres()) GTEST_SKIP() << "PostgreSQL only: runs as pg.BridgeIntegration.*";
  Broker broker;
  TempDir dir{"tern-reconcile"};
  fs::create_directories(dir / "artifacts");
  write_test_artifact(dir / "artifacts", "release-1", std::string(100000, 'y'));
  const std::string db = test_store(dir.path());
  std::vector<std::unique_ptr<Process>> bridges;
  auto logs = [&] {
    std::string all;
    for (int n : {1, 2}) {
      try {
        all += "---- bridge-" + std::to_string(n) + "\n" + read_file(dir / ("bridge-" + std::to_string(n) + ".log"));
      } catch (const std::exception&) {
      }
    }
    return all;
  };
  for (int n : {1, 2}) {
    auto conf = dir / ("bridge-" + std::to_string(n) + ".conf");
    boost::json::object cfg{{"broker_uri", broker.services_uri()},
                            {"client_id", "tern-bridge-" + std::to_string(n)},
                            {"ca_file", (certs() / "ca.crt").string()},
                            {"cert_file", (certs() / "bridge.crt").string()},
                            {"key_file", (certs() / "bridge.key").string()},
                            {"db", db},
                            {"artifact_dir", (dir / "artifacts").string()},
                            {"serve_artifacts", false},
                            {"public_url", "https://127.0.0.1:8443"},
                            {"shared_group", "tern-bridge"},
                            {"retained_device_state", false},
                            {"reconcile_seconds", 2},
                            {"log_level", "debug"}};
    write_file(conf, boost::json::serialize(cfg));
    auto log = dir / ("bridge-" + std::to_string(n) + ".log");
    bridges.push_back(std::make_unique<Process>(
        std::vector<std::string>{(build_dir() / "broker-bridge/tern-bridge").string(), "--config", conf.string()}, log));
  }
  // Ready: each has finished its first reconciliation pass.
  auto passes = [&](int n) {
    std::string text;
    try {
      text = read_file(dir / ("bridge-" + std::to_string(n) + ".log"));
    } catch (const std::exception&) {
    }
    int count = 0;  // passes that finished ("reconciliation pass N: K retained device messages in T ms")
    for (auto p = text.find(" retained device messages in "); p != std::string::npos;
         p = text.find(" retained device messages in ", p + 1))
      ++count;
    return count;
  };
  for (int i = 0; i < 300 && (passes(1) == 0 || passes(2) == 0); ++i) std::this_thread::sleep_for(50ms);
  ASSERT_GT(passes(1), 0) << logs();
  ASSERT_GT(passes(2), 0) << logs();

  auto rr = [&](const std::string& topic, const std::string& body) {
    return run("mosquitto_rr " + broker.client_args("operator") + " -q 1 -t " + shell_quote(topic) +
               " -e tern/fleet/replies/rc -W 10 -m " + shell_quote(body) + " 2>&1")
        .output;
  };
  auto reply = rr("tern/fleet/devices/preauthorize", R"({"devices":["device-1","device-2","device-3","device-4"]})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply << logs();
  reply = rr("tern/fleet/deployments/create", R"({"id":"r1","artifact_name":"release-1","all":true})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply << logs();
  auto status = [&](const std::string& id, const std::string& word, std::uint64_t seq) {
    // Retained, as tern-agent publishes its statuses.
    auto r = run("mosquitto_pub " + broker.client_args(id) + " -q 1 -r -t tern/devices/" + id + "/status -m " +
                 shell_quote(status_json("r1", word, seq)) + " 2>&1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  };
  auto wait_summary = [&](const std::vector<std::string>& needles) {
    std::string last;
    for (int i = 0; i < 300; ++i) {
      last = run("mosquitto_sub " + broker.client_args("operator") +
                 " -t tern/fleet/deployments/r1 -C 1 -W 2 --retained-only 2>/dev/null")
                 .output;
      bool all = true;
      for (auto& n : needles) all = all && last.find(n) != std::string::npos;
      if (all) return last;
      std::this_thread::sleep_for(100ms);
    }
    ADD_FAILURE() << "the summary never had all of the expected counts; last: " << last << logs();
    return last;
  };
  for (auto id : {"device-1", "device-2", "device-3", "device-4"}) status(id, "downloading", 1);
  wait_summary({"\"downloading\":4"});

  // The bridges are stalled (SIGSTOP) while the broker restarts, and the devices report their
  // outcome before the bridges are back: nobody holds the shared subscription, so the live
  // messages go nowhere.
  for (auto& b : bridges) ASSERT_EQ(::kill(b->pid(), SIGSTOP), 0);
  broker.stop();
  broker.start();
  status("device-1", "success", 2);
  status("device-2", "installing", 2);
  status("device-2", "success", 3);
  status("device-3", "failure", 2);
  status("device-4", "installing", 2);
  const auto before_restart = passes(1) + passes(2);
  for (auto& b : bridges) ASSERT_EQ(::kill(b->pid(), SIGCONT), 0);

  // Reconnected, each bridge reconciles: the store converges on the devices' last statuses.
  auto s = wait_summary({"\"success\":2", "\"failure\":1", "\"installing\":1"});
  EXPECT_EQ(s.find("\"downloading\""), std::string::npos) << s;
  const auto name = db.substr(db.rfind('/') + 1);
  auto rows = Postgres::shared().psql(name, "SELECT device, status, last_seq FROM device_deployments WHERE deployment = 'r1' ORDER BY device");
  EXPECT_EQ(rows, "device-1|success|2\ndevice-2|success|3\ndevice-3|failure|2\ndevice-4|installing|2\n") << rows << logs();
  EXPECT_GT(passes(1) + passes(2), before_restart) << logs();
  // The outcome came from the retained messages (the live ones had no subscriber).
  const auto all = logs();
  EXPECT_NE(all.find("reconciling tern/devices/device-1/status from its retained message"), std::string::npos) << all;

  // A bridge stalls with statuses delivered to it and is then killed: what it held is gone with
  // its session (expiry 0). The survivor has no reconnection to trigger a pass, so its periodic
  // pass (reconcile_seconds) picks up the devices' retained statuses.
  reply = rr("tern/fleet/devices/preauthorize", R"({"devices":["device-5"]})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply << logs();
  reply = rr("tern/fleet/deployments/create", R"({"id":"r2","artifact_name":"release-1","devices":["device-1","device-2","device-3","device-5"]})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply << logs();
  ASSERT_EQ(::kill(bridges[0]->pid(), SIGSTOP), 0);
  for (auto id : {"device-1", "device-2", "device-3", "device-5"}) {
    auto r = run("mosquitto_pub " + broker.client_args(id) + " -q 1 -r -t tern/devices/" + id + "/status -m " +
                 shell_quote(status_json("r2", "success", 1)) + " 2>&1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  bridges[0]->kill();
  std::string last;
  for (int i = 0; i < 300; ++i) {
    last = run("mosquitto_sub " + broker.client_args("operator") +
               " -t tern/fleet/deployments/r2 -C 1 -W 2 --retained-only 2>/dev/null")
               .output;
    if (last.find("\"success\":4") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_NE(last.find("\"success\":4"), std::string::npos) << last << logs();
  auto r2 = Postgres::shared().psql(name, "SELECT count(*) FROM device_deployments WHERE deployment = 'r2' AND status = 'success'");
  EXPECT_EQ(r2, "4\n") << r2;
  if (HasFailure()) std::cerr << broker.log();
}
}  // namespace
}  // namespace tern::test

namespace tern::test {
namespace {

std::string log_piece(const std::string& dep, std::uint64_t seq, int part, int parts, const std::string& data) {
  boost::json::object o{{"deployment_id", dep}, {"seq", seq}, {"part", part}, {"parts", parts}, {"data", data}};
  return boost::json::serialize(o);
}

// A device sends the log of a failed deployment in pieces on its own tern/devices/{id}/log (the
// broker's ACL lets it): pieces out of order, a repeat, a piece of an older log and a malformed one
// are all handled; the summary's failure entry says a log exists, and tern-fleet prints it.
TEST(BridgeIntegration, AFailedDeploymentsLogIsStoredAndTernFleetPrintsIt) {
  BridgeProcess b;
  b.accept("device-1");
  auto reply = b.rr("tern/fleet/deployments/create", R"({"id":"l1","artifact_name":"release-1","all":true})");
  ASSERT_NE(reply.find("\"ok\":true"), std::string::npos) << reply;
  b.device_pub("device-1", "log", log_piece("l1", 7, 0, 1, "an older attempt's log\n"));
  b.device_pub("device-1", "log", log_piece("l1", 9, 2, 3, "Download_Enter_00 failed with exit status 1\n"));
  b.device_pub("device-1", "log", log_piece("l1", 9, 0, 3, "2026-11-30T18:00:00Z I installing release-1\n"));
  b.device_pub("device-1", "log", log_piece("l1", 8, 1, 3, "a piece of the older log, arriving late\n"));
  b.device_pub("device-1", "log", R"({"deployment_id":"l1","seq":9,"part":5,"parts":3,"data":"x"})");
  // Not complete yet: the missing piece is marked where it belongs.
  auto partial = b.rr("tern/fleet/devices/device-1/log", R"({"deployment_id":"l1"})");
  EXPECT_NE(partial.find("\"complete\":false"), std::string::npos) << partial;
  EXPECT_NE(partial.find("piece 2 of 3 of this log has not arrived"), std::string::npos) << partial;
  b.device_pub("device-1", "log", log_piece("l1", 9, 1, 3, "vetoed: on battery \xc3\xa9\n"));
  b.device_pub("device-1", "log", log_piece("l1", 9, 1, 3, "vetoed: on battery \xc3\xa9\n"));  // QoS 1 repeat
  b.status("device-1", "l1", "failure", 9, "Download_Enter: vetoed");
  b.wait_summary("l1", std::vector<std::string>{"\"failure\":1", "\"log\":true", "\"log_complete\":true"});

  const std::string fleet = shell_quote((source_dir() / "scripts/tern-fleet").string()) + " --host 127.0.0.1 --port " +
                            std::to_string(b.broker.services_port()) + " --certs " + shell_quote(certs().string());
  auto r = run(fleet + " log device-1 l1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("log of l1 on device-1 (sent as l1, 3 of 3 pieces)\n"
                          "2026-11-30T18:00:00Z I installing release-1\nvetoed: on battery \xc3\xa9\n"
                          "Download_Enter_00 failed with exit status 1\n"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("older"), std::string::npos) << "the newer attempt's log replaced the older one: " << r.output;
  auto none = run(fleet + " log device-1 nothing-here 2>&1");
  EXPECT_EQ(none.exit_code, 1) << none.output;
  EXPECT_NE(none.output.find("no log from device-1 for deployment nothing-here"), std::string::npos) << none.output;
  // Another device cannot write device-1's log (ACL): nothing changes.
  auto forged = run("mosquitto_pub " + b.broker.client_args("device-2") + " -q 1 -t tern/devices/device-1/log -m " +
                    shell_quote(log_piece("l1", 99, 0, 1, "forged")) + " 2>&1");
  (void)forged;  // refused by the broker (reason 135) or dropped: either way not stored
  r = run(fleet + " log device-1 l1");
  EXPECT_EQ(r.output.find("forged"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace tern::test
