#include "tls_files.hpp"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <stdlib.h>

namespace troupe::testing {
namespace {

struct Free {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
  void operator()(X509* x) const { X509_free(x); }
};
using Key = std::unique_ptr<EVP_PKEY, Free>;
using Cert = std::unique_ptr<X509, Free>;

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("TlsFiles: ") + what + " failed");
}

Key new_key() {
  Key k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  check(k != nullptr, "EC key generation");
  return k;
}

void add_ext(X509* x, X509V3_CTX* ctx, int nid, const char* value) {
  X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, ctx, nid, value);
  check(e != nullptr, "X509V3_EXT_conf_nid");
  X509_add_ext(x, e, -1);
  X509_EXTENSION_free(e);
}

// A certificate for `key` named `cn`, signed by `issuer` (self-signed when null).
Cert new_cert(EVP_PKEY* key, const char* cn, X509* issuer, EVP_PKEY* issuer_key, bool ca) {
  static long serial = 1;
  Cert x(X509_new());
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 30L * 24 * 3600);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn),
                             -1, -1, 0);
  X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : x.get(), x.get(), nullptr, nullptr, 0);
  add_ext(x.get(), &ctx, NID_subject_key_identifier, "hash");
  add_ext(x.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  if (ca) {
    add_ext(x.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(x.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_ext(x.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(x.get(), &ctx, NID_key_usage, "critical,digitalSignature");
    add_ext(x.get(), &ctx, NID_ext_key_usage, "serverAuth,clientAuth");
    add_ext(x.get(), &ctx, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1");
  }
  check(X509_sign(x.get(), issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return x;
}

void write_pem(const std::string& path, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  check(f != nullptr, "fopen");
  const bool ok = cert ? PEM_write_X509(f, cert) == 1
                       : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  std::fclose(f);
  check(ok, "PEM write");
}

}  // namespace

TlsFiles::TlsFiles() {
  char tmpl[] = "/tmp/troupe-tls-XXXXXX";
  check(mkdtemp(tmpl) != nullptr, "mkdtemp");
  dir_ = tmpl;
  make();
}

TlsFiles::TlsFiles(std::string dir) : dir_(std::move(dir)), remove_(false) {
  make();
}

void TlsFiles::make() {
  auto make = [&](const char* ca_name, const char* leaf, const char* leaf_cn, const char* client) {
    Key ca_key = new_key();
    Cert ca = new_cert(ca_key.get(), ca_name, nullptr, nullptr, true);
    write_pem(path(std::string(ca_name) + ".pem"), ca.get(), nullptr);
    for (const char* who : {leaf, client}) {
      if (!who) continue;
      Key k = new_key();
      Cert c = new_cert(k.get(), leaf_cn, ca.get(), ca_key.get(), false);
      write_pem(path(std::string(who) + ".pem"), c.get(), nullptr);
      write_pem(path(std::string(who) + ".key"), nullptr, k.get());
    }
  };
  make("ca", "server", "troupe test", "client");
  make("rogue-ca", "rogue", "troupe test", nullptr);
}

TlsFiles::~TlsFiles() {
  if (!remove_) return;
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace troupe::testing
