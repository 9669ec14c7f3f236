#include "common/error.hpp"

#include <gtest/gtest.h>

namespace tern {
namespace {

Result<int> parse_digit(char c) {
  if (c < '0' || c > '9') return fail(Errc::invalid_argument, std::string("'") + c + "' is not a digit");
  return c - '0';
}

TEST(Error, ContextPrefixesWhatWasBeingDone) {
  auto r = parse_digit('x');
  ASSERT_FALSE(r);
  Error e = r.error().context("reading version");
  EXPECT_EQ(e.message(), "reading version: 'x' is not a digit");
  EXPECT_EQ(e.code(), Errc::invalid_argument);
}

TEST(Error, ValueThrowsErrorException) {
  EXPECT_EQ(parse_digit('7').value(), 7);
  try {
    (void)parse_digit('?').value();
    FAIL() << "value() on an error must throw";
  } catch (const ErrorException& ex) {
    EXPECT_EQ(ex.error().code(), Errc::invalid_argument);
    EXPECT_STREQ(ex.what(), "'?' is not a digit");
  }
}

TEST(Error, FromErrnoNamesTheOperation) {
  Error e = Error::from_errno("opening /nonexistent", ENOENT);
  EXPECT_EQ(e.message(), "opening /nonexistent: No such file or directory");
  EXPECT_EQ(e.code(), std::errc::no_such_file_or_directory);
}

}  // namespace
}  // namespace tern
