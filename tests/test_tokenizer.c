/* test_tokenizer.c: BERT WordPiece tokenizer against bert-base-uncased's vocab.txt.
 *
 * Expected ids were looked up in the vocab file (id = line number - 1, `grep -n -x TOKEN`) and
 * cross-checked against Hugging Face's BertWordPieceTokenizer on the same file. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

enum { PAD = 0, UNK = 100, CLS = 101, SEP = 102 };

static elmo_tokenizer *g_bert;   /* bert-base-uncased, lowercase = 1 */

static int setup_bert(void **state) {
  (void)state;
  char *path = tu_shared("vocab/bert-base-uncased-vocab.txt");
  elmo_err err = {0};
  int rc = elmo_tokenizer_load(&g_bert, path, 1, &err);
  if (rc != ELMO_OK) fprintf(stderr, "load %s: %s\n", path, err.msg);
  free(path);
  return rc;
}

static int teardown_bert(void **state) {
  (void)state;
  elmo_tokenizer_free(&g_bert);
  return g_bert != NULL;
}

/* Asserts that the pieces of text are exactly want[n]; prints both lists on failure. */
static void check_pieces_of(const elmo_tokenizer *t, const char *text, const int32_t *want, int n) {
  int32_t got[512];
  int k = elmo_tokenize_pieces(t, text, got, 512);
  int same = k == n;
  for (int i = 0; same && i < n; i++) same = got[i] == want[i];
  if (!same) {
    fprintf(stderr, "text \"%s\":\n  want", text);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", want[i]);
    fprintf(stderr, "\n  got ");
    for (int i = 0; i < k; i++) fprintf(stderr, " %d(%s)", got[i], elmo_tokenizer_token(t, got[i]));
    fprintf(stderr, "\n");
    fail_msg("pieces of \"%s\" differ", text);
  }
}

#define CHECK(text, ...)                                                          \
  do {                                                                            \
    const int32_t want_[] = {__VA_ARGS__};                                        \
    check_pieces_of(g_bert, (text), want_, (int)(sizeof want_ / sizeof *want_)); \
  } while (0)

static void test_vocab_lookup(void **state) {
  (void)state;
  assert_int_equal(elmo_tokenizer_vocab_size(g_bert), 30522);
  assert_int_equal(elmo_tokenizer_id(g_bert, "[PAD]"), PAD);
  assert_int_equal(elmo_tokenizer_id(g_bert, "[UNK]"), UNK);
  assert_int_equal(elmo_tokenizer_id(g_bert, "[CLS]"), CLS);
  assert_int_equal(elmo_tokenizer_id(g_bert, "[SEP]"), SEP);
  assert_int_equal(elmo_tokenizer_id(g_bert, "[MASK]"), 103);
  assert_int_equal(elmo_tokenizer_id(g_bert, "hello"), 7592);
  assert_int_equal(elmo_tokenizer_id(g_bert, "##ble"), 3468);
  assert_int_equal(elmo_tokenizer_id(g_bert, "ble"), -1);         /* only as a continuation */
  assert_int_equal(elmo_tokenizer_id(g_bert, "Hello"), -1);        /* uncased vocab */
  assert_int_equal(elmo_tokenizer_id(g_bert, "unaffable"), -1);
  assert_int_equal(elmo_tokenizer_id(g_bert, ""), -1);
  assert_string_equal(elmo_tokenizer_token(g_bert, 7592), "hello");
  assert_string_equal(elmo_tokenizer_token(g_bert, 0), "[PAD]");
  assert_string_equal(elmo_tokenizer_token(g_bert, 30521), "##～");   /* last line */
  assert_null(elmo_tokenizer_token(g_bert, 30522));
  assert_null(elmo_tokenizer_token(g_bert, -1));
}

static void test_basic_sentences(void **state) {
  (void)state;
  CHECK("Hello, World!", 7592, 1010, 2088, 999);                 /* hello , world ! */
  CHECK("don't", 2123, 1005, 1056);                              /* don ' t */
  CHECK("the quick brown fox jumps over the lazy dog",
        1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899);
  /* apple iphone 12 pro max ( 128 ##gb ) - pacific blue */
  CHECK("Apple iPhone 12 Pro Max (128GB) - Pacific Blue",
        6207, 18059, 2260, 4013, 4098, 1006, 11899, 18259, 1007, 1011, 3534, 2630);
  /* nike men ' s air zoom pegasus 37 running shoes */
  CHECK("Nike Men's Air Zoom Pegasus 37 Running Shoes",
        18368, 2273, 1005, 1055, 2250, 24095, 26606, 4261, 2770, 6007);
}

/* "unaffable" is not in the vocab; the longest vocab prefix is "una", then "##ffa", "##ble"
 * (not the "un ##aff ##able" of BERT's README, which used another vocabulary). */
static void test_longest_match_first(void **state) {
  (void)state;
  const char *absent[] = {"unaffabl", "unaffab", "unaffa", "unaff", "unaf",
                          "##ffable", "##ffabl", "##ffab"};
  for (size_t i = 0; i < sizeof absent / sizeof *absent; i++)
    assert_int_equal(elmo_tokenizer_id(g_bert, absent[i]), -1);
  assert_int_equal(elmo_tokenizer_id(g_bert, "un"), 4895);   /* a shorter prefix exists ... */
  assert_int_equal(elmo_tokenizer_id(g_bert, "##aff"), -1);
  CHECK("unaffable", 14477, 20961, 3468);                     /* ... but "una" is longer */
  /* 100 x: "xx" then 49 x "##xx" */
  char word[101];
  memset(word, 'x', 100);
  word[100] = '\0';
  int32_t got[64];
  assert_int_equal(elmo_tokenize_pieces(g_bert, word, got, 64), 50);
  assert_int_equal(got[0], 22038);
  for (int i = 1; i < 50; i++) assert_int_equal(got[i], 20348);
}

static void test_unknown_words(void **state) {
  (void)state;
  CHECK("hello a\xE2\x98\x83" "b world", 7592, UNK, 2088);    /* U+2603 snowman: no piece */
  CHECK("\xE2\x98\x83", UNK);
  char text[160];
  memset(text, 'x', 101);                                     /* 101 characters: too long */
  strcpy(text + 101, " hello");
  CHECK(text, UNK, 7592);
}

static void test_accents_and_case(void **state) {
  (void)state;
  CHECK("H\xC3\xA9llo na\xC3\xAFve caf\xC3\xA9", 7592, 15743, 7668);       /* Héllo naïve café */
  CHECK("HE\xCC\x81LLO", 7592);                  /* E + U+0301 combining acute */
  CHECK("\xC2\xBFQu\xC3\xA9?", 1094, 10861, 1029);                          /* ¿ que ? */
  CHECK("\xC4\xB0stanbul", 9960);                                           /* İstanbul */
  CHECK("\xC3\x86r\xC3\xB8", 1097, 2099, 16415);   /* Ærø -> æ ##r ##ø: ø has no NFD */
  CHECK("Stra\xC3\x9F" "e", 2358, 27807);          /* Straße -> st ##raße: ß stays */
  /* Greek and Cyrillic capitals, with and without tonos */
  CHECK("\xCE\x91\xCE\x98\xCE\x97\xCE\x9D\xCE\x91", 1155, 29725, 24824, 16177, 14608);  /* ΑΘΗΝΑ */
  CHECK("\xCE\x91\xCE\xB8\xCE\xAE\xCE\xBD\xCE\xB1", 1155, 29725, 24824, 16177, 14608);  /* Αθήνα */
  CHECK("\xD0\x9C\xD0\x9E\xD0\xA1\xD0\x9A\xD0\x92\xD0\x90",                            /* МОСКВА */
        1191, 14150, 29747, 23925, 25529, 10260);
}

static void test_cjk_hangul_kana(void **state) {
  (void)state;
  CHECK("\xE4\xB8\xAD\xE6\x96\x87\xE5\xAD\x97", 1746, 1861, UNK);   /* 中 文 字(not in vocab) */
  CHECK("ab\xE4\xB8\xAD" "cd", 11113, 1746, 3729);                   /* ab 中 cd */
  /* 한국: Hangul syllables decompose into jamo, which stay one word */
  CHECK("\xED\x95\x9C\xEA\xB5\xAD", 1469, 30006, 30021, 29991, 30014, 30020);
  CHECK("\xE3\x81\x8C\xE3\x81\x8E", 1651, 30178);   /* がぎ -> か ##き (dakuten is a mark) */
}

static void test_punctuation(void **state) {
  (void)state;
  CHECK("$5+3", 1002, 1019, 1009, 1017);                           /* ASCII symbols split too */
  CHECK("\xC2\xAB" "hello\xC2\xBB", 1077, 7592, 1090);             /* « hello » */
  CHECK("a\xE2\x80\x94" "b", 1037, 1517, 1038);                    /* a — b (U+2014) */
  CHECK("hello...", 7592, 1012, 1012, 1012);
}

static void test_cleaning(void **state) {
  (void)state;
  CHECK("hello\tworld\nfoo\xC2\xA0" "bar\r\xE2\x80\xA8" "hello", 7592, 2088, 29379, 3347, 7592);
  CHECK("he\x01l\x7Flo", 7592);                              /* control characters dropped */
  CHECK("hel\xC2\xADlo", 7592);                              /* U+00AD soft hyphen (Cf) */
  CHECK("hel\xE2\x80\x8Blo", 7592);                          /* U+200B zero width space (Cf) */
  CHECK("hel\xEF\xBF\xBDlo", 7592);                          /* U+FFFD */
  CHECK("hel\xFFlo", 7592);                                  /* invalid byte */
  CHECK("hel\xE4\xB8lo", 7592);                              /* truncated sequence */
  CHECK("hel\xC0\xAFlo", 7592);                              /* overlong '/' */
  CHECK("hel\xED\xA0\x80lo", 7592);                          /* UTF-16 surrogate */
  CHECK("hel\xEE\x80\x80lo", 7592);                          /* private use U+E000 (Co) */
  int32_t none[4];
  assert_int_equal(elmo_tokenize_pieces(g_bert, "   \t\n \xC2\xAD", none, 4), 0);
  assert_int_equal(elmo_tokenize_pieces(g_bert, "", none, 4), 0);
}

static void test_special_tokens_padding(void **state) {
  (void)state;
  int32_t ids[8];
  uint8_t mask[8];
  memset(ids, 0x7f, sizeof ids);
  memset(mask, 7, sizeof mask);
  assert_int_equal(elmo_tokenize(g_bert, "Hello, World!", 8, ids, mask), 6);
  const int32_t want[8] = {CLS, 7592, 1010, 2088, 999, SEP, PAD, PAD};
  const uint8_t want_mask[8] = {1, 1, 1, 1, 1, 1, 0, 0};
  assert_memory_equal(ids, want, sizeof want);
  assert_memory_equal(mask, want_mask, sizeof want_mask);

  assert_int_equal(elmo_tokenize(g_bert, "", 4, ids, mask), 2);
  const int32_t empty[4] = {CLS, SEP, PAD, PAD};
  assert_memory_equal(ids, empty, sizeof empty);
  assert_int_equal(mask[1], 1);
  assert_int_equal(mask[2], 0);
  assert_int_equal(elmo_tokenize(g_bert, NULL, 2, ids, NULL), 2);
  assert_int_equal(ids[0], CLS);
  assert_int_equal(ids[1], SEP);
  assert_int_equal(elmo_tokenize(g_bert, "hello", 1, ids, mask), -1);
}

static void test_truncation(void **state) {
  (void)state;
  int32_t ids[6];
  uint8_t mask[6];
  /* the quick brown fox ... : 9 pieces, room for 4 */
  assert_int_equal(elmo_tokenize(g_bert, "the quick brown fox jumps over the lazy dog", 6, ids, mask), 6);
  const int32_t want[6] = {CLS, 1996, 4248, 2829, 4419, SEP};
  assert_memory_equal(ids, want, sizeof want);
  for (int i = 0; i < 6; i++) assert_int_equal(mask[i], 1);
  /* a cut inside a word keeps its first pieces */
  assert_int_equal(elmo_tokenize(g_bert, "unaffable", 4, ids, mask), 4);
  const int32_t cut[4] = {CLS, 14477, 20961, SEP};
  assert_memory_equal(ids, cut, sizeof cut);
  int32_t pieces[3];
  assert_int_equal(elmo_tokenize_pieces(g_bert, "hello hello hello hello", pieces, 3), 3);
  assert_int_equal(elmo_tokenize_pieces(g_bert, "hello", pieces, 0), 0);
}

/* Random bytes and random mixes of vocab tokens: ids stay in range, [UNK] never is a piece of a
 * longer split, and a smaller cap gives a prefix of the full result. */
static void test_random_text_properties(void **state) {
  (void)state;
  uint64_t rng = 20240607;
  char text[400];
  int32_t full[512], part[512];
  for (int round = 0; round < 3000; round++) {
    int len = (int)(tu_rand_u64(&rng) % 300);
    for (int i = 0; i < len; i++) {
      if (round % 2) {
        text[i] = (char)(1 + tu_rand_u64(&rng) % 255);   /* any byte but NUL */
      } else {
        static const char alpha[] = "abcdefghij KLMNOP,.'-\xC3\xA9\xE4\xB8\xAD";
        text[i] = alpha[tu_rand_u64(&rng) % (sizeof alpha - 1)];
      }
    }
    text[len] = '\0';
    int n = elmo_tokenize_pieces(g_bert, text, full, 512);
    assert_true(n >= 0 && n <= len);
    for (int i = 0; i < n; i++) assert_true(full[i] >= 0 && full[i] < 30522);
    int cap = n > 0 ? (int)(tu_rand_u64(&rng) % (uint64_t)n) : 0;
    assert_int_equal(elmo_tokenize_pieces(g_bert, text, part, cap), cap);
    assert_memory_equal(part, full, (size_t)cap * sizeof *part);
  }
}

/* A small vocabulary exercises cased mode, duplicates, .gz input and the digest. */
static const char k_small_vocab[] =
    "[PAD]\n[UNK]\n[CLS]\n[SEP]\nHello\nhello\ncaf\xC3\xA9\ncafe\n,\n##s\nhello\n";

static void test_cased_and_duplicates(void **state) {
  (void)state;
  char *path = tu_write_temp(k_small_vocab, ".txt.gz");
  elmo_err err = {0};
  elmo_tokenizer *cased = NULL, *uncased = NULL;
  assert_int_equal(elmo_tokenizer_load(&cased, path, 0, &err), ELMO_OK);
  assert_int_equal(elmo_tokenizer_load(&uncased, path, 1, &err), ELMO_OK);
  assert_int_equal(elmo_tokenizer_vocab_size(cased), 11);
  assert_int_equal(elmo_tokenizer_id(cased, "hello"), 10);   /* line 11 repeats line 6 */
  assert_string_equal(elmo_tokenizer_token(cased, 5), "hello");

  int32_t got[8];
  assert_int_equal(elmo_tokenize_pieces(cased, "Hello, caf\xC3\xA9s", got, 8), 4);
  const int32_t want_cased[4] = {4, 8, 6, 9};                 /* Hello , café ##s */
  assert_memory_equal(got, want_cased, sizeof want_cased);
  assert_int_equal(elmo_tokenize_pieces(uncased, "Hello, caf\xC3\xA9s", got, 8), 4);
  const int32_t want_uncased[4] = {10, 8, 7, 9};              /* hello , cafe ##s */
  assert_memory_equal(got, want_uncased, sizeof want_uncased);
  assert_int_equal(elmo_tokenize_pieces(cased, "HELLO", got, 8), 1);
  assert_int_equal(got[0], 1);                                /* [UNK]: no lowercasing */

  elmo_tokenizer *again = NULL;
  assert_int_equal(elmo_tokenizer_load(&again, path, 1, &err), ELMO_OK);
  assert_true(elmo_tokenizer_hash(again) == elmo_tokenizer_hash(uncased));
  assert_true(elmo_tokenizer_hash(cased) != elmo_tokenizer_hash(uncased));
  assert_true(elmo_tokenizer_hash(g_bert) != elmo_tokenizer_hash(uncased));
  elmo_tokenizer_free(&again);
  elmo_tokenizer_free(&cased);
  elmo_tokenizer_free(&uncased);
  assert_null(cased);
  remove(path);
  free(path);
}

static void test_load_errors(void **state) {
  (void)state;
  elmo_err err = {0};
  elmo_tokenizer *t = (elmo_tokenizer *)&err;   /* must be reset to NULL on failure */
  assert_int_equal(elmo_tokenizer_load(&t, "/nonexistent/vocab.txt", 1, &err), ELMO_EINPUT);
  assert_null(t);
  tu_assert_contains(err.msg, "/nonexistent/vocab.txt");

  char *empty = tu_write_temp("", ".txt");
  assert_int_equal(elmo_tokenizer_load(&t, empty, 1, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, empty);
  tu_assert_contains(err.msg, "empty vocabulary");

  char *no_cls = tu_write_temp("[PAD]\n[UNK]\n[SEP]\nhello\n", ".txt");
  assert_int_equal(elmo_tokenizer_load(&t, no_cls, 1, &err), ELMO_EINPUT);
  assert_null(t);
  tu_assert_contains(err.msg, no_cls);
  tu_assert_contains(err.msg, "[CLS]");
  remove(empty);
  remove(no_cls);
  free(empty);
  free(no_cls);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vocab_lookup),
      cmocka_unit_test(test_basic_sentences),
      cmocka_unit_test(test_longest_match_first),
      cmocka_unit_test(test_unknown_words),
      cmocka_unit_test(test_accents_and_case),
      cmocka_unit_test(test_cjk_hangul_kana),
      cmocka_unit_test(test_punctuation),
      cmocka_unit_test(test_cleaning),
      cmocka_unit_test(test_special_tokens_padding),
      cmocka_unit_test(test_truncation),
      cmocka_unit_test(test_random_text_properties),
      cmocka_unit_test(test_cased_and_duplicates),
      cmocka_unit_test(test_load_errors),
  };
  return cmocka_run_group_tests(tests, setup_bert, teardown_bert);
}
