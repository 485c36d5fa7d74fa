/* pretrained.c: Hugging Face BERT / DistilBERT directories -> elmo encoder parameters. */
#include "pretrained.h"
#include "numerics.h"
#include "safetensors.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *path, elmo_err *err) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    elmo_fail(err, ELMO_EINPUT, "%s: cannot open (model.encoder.pretrained must be a Hugging Face directory)", path);
    return NULL;
  }
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  char *s = elmo_malloc((size_t)n + 1);
  size_t got = fread(s, 1, (size_t)n, fp);
  s[got] = '\0';
  fclose(fp);
  return s;
}

/* First integer among the keys (BERT and DistilBERT spell them differently). */
static int get_int(const cJSON *j, const char *a, const char *b, int64_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, a);
  if (!cJSON_IsNumber(v) && b) v = cJSON_GetObjectItemCaseSensitive(j, b);
  if (!cJSON_IsNumber(v)) return 0;
  *out = (int64_t)v->valuedouble;
  return 1;
}

static int read_lowercase(const char *dir) {
  char *p = elmo_path_join(dir, "tokenizer_config.json");
  int lc = 1;
  if (elmo_file_exists(p)) {
    elmo_err e;
    char *s = slurp(p, &e);
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    const cJSON *v = j ? cJSON_GetObjectItemCaseSensitive(j, "do_lower_case") : NULL;
    if (cJSON_IsBool(v)) lc = cJSON_IsTrue(v);
    cJSON_Delete(j);
    free(s);
  }
  free(p);
  return lc;
}

int elmo_hf_read_config(const char *dir, elmo_hf_info *out, elmo_err *err) {
  memset(out, 0, sizeof *out);
  char *p = elmo_path_join(dir, "config.json");
  char *s = slurp(p, err);
  if (!s) { free(p); return ELMO_EINPUT; }
  cJSON *j = cJSON_Parse(s);
  free(s);
  int rc = ELMO_OK;
  if (!j) {
    rc = elmo_fail(err, ELMO_EINPUT, "%s: invalid JSON", p);
    goto done;
  }
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
  out->distilbert = cJSON_IsString(mt) && !strcmp(mt->valuestring, "distilbert");
  static const struct { const char *a, *b, *what; } keys[6] = {
    {"hidden_size", "dim", "hidden_size"}, {"num_hidden_layers", "n_layers", "num_hidden_layers"},
    {"num_attention_heads", "n_heads", "num_attention_heads"}, {"intermediate_size", "hidden_dim", "intermediate_size"},
    {"max_position_embeddings", NULL, "max_position_embeddings"}, {"vocab_size", NULL, "vocab_size"},
  };
  int64_t *dst[6] = {&out->hidden, &out->layers, &out->heads, &out->ffn, &out->max_position, &out->vocab_size};
  for (int i = 0; i < 6; i++)
    if (!get_int(j, keys[i].a, keys[i].b, dst[i])) {
      rc = elmo_fail(err, ELMO_EINPUT, "%s: missing integer \"%s\"", p, keys[i].what);
      goto done;
    }
  if (!get_int(j, "type_vocab_size", NULL, &out->type_vocab)) out->type_vocab = out->distilbert ? 0 : 2;
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, out->distilbert ? "activation" : "hidden_act");
  if (cJSON_IsString(act) && strcmp(act->valuestring, "gelu"))
    rc = elmo_fail(err, ELMO_EINPUT, "%s: activation \"%s\" is not supported (expected gelu)", p, act->valuestring);
  out->lowercase = read_lowercase(dir);
done:
  cJSON_Delete(j);
  free(p);
  return rc;
}

/* DistilBERT name of an elmo (BERT) tensor name, into buf. */
static void distil_name(const char *bert, char *buf, size_t n) {
  static const char *map[][2] = {
    {"attention.self.query", "attention.q_lin"}, {"attention.self.key", "attention.k_lin"},
    {"attention.self.value", "attention.v_lin"}, {"attention.output.dense", "attention.out_lin"},
    {"attention.output.LayerNorm", "sa_layer_norm"}, {"intermediate.dense", "ffn.lin1"},
    {"output.dense", "ffn.lin2"}, {"output.LayerNorm", "output_layer_norm"},
  };
  int layer;
  char rest[96];
  if (sscanf(bert, "encoder.layer.%d.%95s", &layer, rest) == 2) {
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
      size_t m = strlen(map[i][0]);
      if (!strncmp(rest, map[i][0], m) && rest[m] == '.') {
        snprintf(buf, n, "transformer.layer.%d.%s%s", layer, map[i][1], rest + m);
        return;
      }
    }
  }
  snprintf(buf, n, "%s", bert);
}

static int find_tensor(const elmo_st_file *f, const char *name, int distil, const char **dt, int *nd,
                       int64_t *shape, const void **data) {
  char n1[160], n2[200];
  if (distil) distil_name(name, n1, sizeof n1);
  else snprintf(n1, sizeof n1, "%s", name);
  static const char *prefix[3] = {"", "bert.", "distilbert."};
  for (int i = 0; i < 3; i++) {
    snprintf(n2, sizeof n2, "%s%s", prefix[i], n1);
    if (elmo_st_find(f, n2, dt, nd, shape, data, NULL)) return 1;
  }
  return 0;
}

static float load_elem(const char *dt, const void *data, int64_t i) {
  if (!strcmp(dt, "F32")) return ((const float *)data)[i];
  if (!strcmp(dt, "BF16")) return elmo_bf16_to_f32(((const uint16_t *)data)[i]);
  /* F16 */
  uint16_t h = ((const uint16_t *)data)[i];
  uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023;
  float v = e == 0 ? (float)m / 16777216.0f : e == 31 ? (m ? NAN : INFINITY)
                                                      : (float)(m | 1024) * ((float)(1u << e) / 33554432.0f);
  return sign ? -v : v;
}

int elmo_hf_load_params(const char *dir, const elmo_model_desc *md, void *enc_param, elmo_err *err) {
  elmo_hf_info info;
  int rc = elmo_hf_read_config(dir, &info, err);
  if (rc) return rc;
  char *p = elmo_path_join(dir, "model.safetensors");
  elmo_st_file *f = NULL;
  rc = elmo_st_open(&f, p, err);
  for (int t = 0; t < md->n_enc_tensors && !rc; t++) {
    const elmo_tensor_slot *s = &md->enc_tensors[t];
    const char *dt;
    int nd;
    int64_t shape[ELMO_ST_MAX_DIMS];
    const void *data;
    if (!find_tensor(f, s->name, info.distilbert, &dt, &nd, shape, &data)) {
      rc = elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' not found (expected a BERT or DistilBERT checkpoint)", p,
                     s->name);
      break;
    }
    int64_t numel = 1;
    for (int i = 0; i < nd; i++) numel *= shape[i];
    if (numel != s->numel || (nd == 2 && (shape[0] != s->shape[0] || shape[1] != s->shape[1]))) {
      rc = elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' has %lld elements (expected %lld)", p, s->name,
                     (long long)numel, (long long)s->numel);
      break;
    }
    if (strcmp(dt, "F32") && strcmp(dt, "BF16") && strcmp(dt, "F16")) {
      rc = elmo_fail(err, ELMO_EINPUT, "%s: tensor '%s' has dtype %s (expected F32, BF16 or F16)", p, s->name, dt);
      break;
    }
    for (int64_t i = 0; i < numel; i++) {
      float v = load_elem(dt, data, i);
      if (md->enc_dtype == ELMO_BF16) ((uint16_t *)enc_param)[s->offset + i] = elmo_f32_to_bf16(v);
      else ((float *)enc_param)[s->offset + i] = v;
    }
  }
  elmo_st_close(&f);
  free(p);
  return rc;
}
