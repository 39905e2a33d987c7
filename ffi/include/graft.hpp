/*
 * graft.hpp: RAII wrappers over graft.h for C++17.
 *
 * Each class owns one handle and frees it in its destructor; classes are movable, not
 * copyable. Failures throw graft::Error, carrying the status and the message from
 * graft_last_error_message(). Nothing here adds behaviour: lifetimes and thread-safety
 * are those stated in graft.h (a Session is used by one thread at a time; Model,
 * Registry and Ticket may be shared across threads).
 */
#ifndef GRAFT_HPP
#define GRAFT_HPP

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "graft.h"

namespace graft {

/* A failed call: its status and message. */
class Error : public std::runtime_error {
 public:
  Error(graft_status status, const std::string &what) : std::runtime_error(what), status_(status) {}
  graft_status status() const noexcept { return status_; }

 private:
  graft_status status_;
};

inline void check(graft_status status, const char *call) {
  if (status != GRAFT_STATUS_OK)
    throw Error(status, std::string(call) + ": " + graft_status_name(status) + ": " +
                            graft_last_error_message());
}

namespace detail {
template <typename T, void (*Free)(T *)>
struct Deleter {
  void operator()(T *p) const noexcept { Free(p); }
};
template <typename T, void (*Free)(T *)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;
}  // namespace detail

class Model {
 public:
  static Model open(const std::string &path) {
    graft_model *m = nullptr;
    check(graft_model_open(path.c_str(), &m), "graft_model_open");
    return Model(m);
  }
  static Model from_buffer(const void *data, std::size_t len) {
    graft_model *m = nullptr;
    check(graft_model_from_buffer(data, len, &m), "graft_model_from_buffer");
    return Model(m);
  }
  std::vector<graft_input_info> inputs() const {
    std::size_t n = 0;
    check(graft_model_input_count(get(), &n), "graft_model_input_count");
    std::vector<graft_input_info> out(n);
    for (std::size_t k = 0; k < n; k++) check(graft_model_input(get(), k, &out[k]), "graft_model_input");
    return out;
  }
  const graft_model *get() const noexcept { return handle_.get(); }

 private:
  explicit Model(graft_model *m) : handle_(m) {}
  detail::Owned<graft_model, graft_model_free> handle_;
};

/* Kind-detecting load parameters with optional kind and JSON options. */
struct AdapterParams {
  std::string kind;
  std::string options;
};

class Registry {
 public:
  explicit Registry(const Model &model) {
    graft_registry *r = nullptr;
    check(graft_registry_new(model.get(), &r), "graft_registry_new");
    handle_.reset(r);
  }
  void load_plugin(const std::string &path) {
    check(graft_registry_load_plugin(get(), path.c_str()), "graft_registry_load_plugin");
  }
  void insert(const std::string &id, const std::string &path, const AdapterParams &p = {}) {
    graft_adapter_params params = to_c(p);
    check(graft_registry_insert(get(), id.c_str(), path.c_str(), &params), "graft_registry_insert");
  }
  void replace(const std::string &id, const std::string &path, const AdapterParams &p = {}) {
    graft_adapter_params params = to_c(p);
    check(graft_registry_replace(get(), id.c_str(), path.c_str(), &params), "graft_registry_replace");
  }
  void remove(const std::string &id) { check(graft_registry_remove(get(), id.c_str()), "graft_registry_remove"); }
  void save_state(const std::string &id, const std::string &path) const {
    check(graft_registry_save_state(get(), id.c_str(), path.c_str()), "graft_registry_save_state");
  }
  const graft_registry *get() const noexcept { return handle_.get(); }

 private:
  static graft_adapter_params to_c(const AdapterParams &p) {
    graft_adapter_params params = graft_adapter_default_params();
    if (!p.kind.empty()) params.kind = p.kind.c_str();
    if (!p.options.empty()) params.options = p.options.c_str();
    return params;
  }
  detail::Owned<graft_registry, graft_registry_free> handle_;
};

class RowAdapters {
 public:
  explicit RowAdapters(const Registry &registry) {
    graft_row_adapters *r = nullptr;
    check(graft_row_adapters_new(registry.get(), &r), "graft_row_adapters_new");
    handle_.reset(r);
  }
  void reset() { check(graft_row_adapters_reset(handle_.get()), "graft_row_adapters_reset"); }
  void push_base() { check(graft_row_adapters_push_base(handle_.get()), "graft_row_adapters_push_base"); }
  void push(const std::string &id) { check(graft_row_adapters_push(handle_.get(), id.c_str()), "graft_row_adapters_push"); }
  void push_stack(const std::vector<std::pair<std::string, float>> &stack) {
    std::vector<const char *> ids;
    std::vector<float> scales;
    for (const auto &entry : stack) {
      ids.push_back(entry.first.c_str());
      scales.push_back(entry.second);
    }
    check(graft_row_adapters_push_stack(handle_.get(), ids.data(), scales.data(), ids.size()),
          "graft_row_adapters_push_stack");
  }
  const graft_row_adapters *get() const noexcept { return handle_.get(); }

 private:
  detail::Owned<graft_row_adapters, graft_row_adapters_free> handle_;
};

class Ticket {
 public:
  explicit Ticket(graft_ticket *t) : handle_(t) {}
  void feedback(float label) const { check(graft_ticket_feedback(handle_.get(), label), "graft_ticket_feedback"); }
  std::size_t row() const {
    std::size_t r = 0;
    check(graft_ticket_row(handle_.get(), &r), "graft_ticket_row");
    return r;
  }

 private:
  detail::Owned<graft_ticket, graft_ticket_free> handle_;
};

class Session {
 public:
  explicit Session(const Model &model, const graft_session_params *params = nullptr) {
    graft_session *s = nullptr;
    check(graft_session_new(model.get(), params, &s), "graft_session_new");
    handle_.reset(s);
  }
  /* Runs a batch; `adapters` nullptr runs the base model. */
  void run(const std::vector<graft_input> &inputs, const RowAdapters *adapters = nullptr) {
    check(graft_session_run(handle_.get(), inputs.data(), inputs.size(), adapters ? adapters->get() : nullptr),
          "graft_session_run");
  }
  std::vector<graft_output> outputs() const {
    std::size_t n = 0;
    check(graft_session_output_count(handle_.get(), &n), "graft_session_output_count");
    std::vector<graft_output> out(n);
    for (std::size_t k = 0; k < n; k++) check(graft_session_output(handle_.get(), k, &out[k]), "graft_session_output");
    return out;
  }
  /* Rows of the last run whose outputs are NaN or ±Inf from finite inputs (answer them
   * with an error, serve the others); empty under GRAFT_NAN_POLICY_PROPAGATE. */
  std::vector<graft_row_fault> row_faults() const {
    std::size_t n = 0;
    check(graft_session_row_fault_count(handle_.get(), &n), "graft_session_row_fault_count");
    std::vector<graft_row_fault> out(n);
    for (std::size_t k = 0; k < n; k++) check(graft_session_row_fault(handle_.get(), k, &out[k]), "graft_session_row_fault");
    return out;
  }
  graft_output output(const std::string &name) const {
    graft_output out{};
    check(graft_session_output_by_name(handle_.get(), name.c_str(), &out), "graft_session_output_by_name");
    return out;
  }
  std::vector<Ticket> tickets() const {
    std::size_t n = 0;
    check(graft_session_ticket_count(handle_.get(), &n), "graft_session_ticket_count");
    std::vector<Ticket> out;
    out.reserve(n);
    for (std::size_t k = 0; k < n; k++) {
      graft_ticket *t = nullptr;
      check(graft_session_ticket(handle_.get(), k, &t), "graft_session_ticket");
      out.emplace_back(t);
    }
    return out;
  }
  std::string kernels() const {
    const char *name = nullptr;
    check(graft_session_kernels(handle_.get(), &name), "graft_session_kernels");
    return name;
  }

 private:
  detail::Owned<graft_session, graft_session_free> handle_;
};

}  // namespace graft

#endif /* GRAFT_HPP */
