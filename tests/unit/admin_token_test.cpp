// The admin API's guards as pure logic: the token file's rules, the Authorization header, the
// comparison, and which Host values name the admin address.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "liege/admin.hpp"
#include "liege/admin_token.hpp"

namespace fs = std::filesystem;
using liege::admin_host_allowed;
using liege::bearer_token;
using liege::read_admin_token;
using liege::token_matches;

namespace {

class TokenFile : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("liege-token-" + std::to_string(::getpid()));
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    fs::path write(const std::string& text, fs::perms perms) {
        const fs::path p = dir_ / "token";
        fs::remove(p);
        std::ofstream(p) << text;
        fs::permissions(p, perms);
        return p;
    }

    // The message read_admin_token throws, or "" when it does not.
    static std::string error_of(const fs::path& p) {
        try {
            read_admin_token(p);
        } catch (const std::invalid_argument& e) {
            return e.what();
        }
        return "";
    }

    fs::path dir_;
};

constexpr auto kOwner = fs::perms::owner_read | fs::perms::owner_write;

} // namespace

TEST_F(TokenFile, IsItsContentWithoutTheTrailingNewline) {
    EXPECT_EQ(read_admin_token(write("0123456789abcdef0123\n", kOwner)), "0123456789abcdef0123");
    EXPECT_EQ(read_admin_token(write("0123456789abcdef  \r\n", fs::perms::owner_read)),
              "0123456789abcdef");
}

TEST_F(TokenFile, OpenToItsGroupOrOthersIsRefusedWithTheFix) {
    fs::path p = write("0123456789abcdef\n", kOwner | fs::perms::group_read);
    EXPECT_EQ(error_of(p), "admin token file " + p.string() +
                               ": mode 0640 lets its group or others at it; "
                               "chmod 600 " +
                               p.string());
    p = write("0123456789abcdef\n", kOwner | fs::perms::others_read);
    EXPECT_NE(error_of(p).find("mode 0604"), std::string::npos);
    p = write("0123456789abcdef\n", kOwner | fs::perms::group_write);
    EXPECT_NE(error_of(p).find("mode 0620"), std::string::npos);
}

TEST_F(TokenFile, AShortEmptyOrOddTokenAndAMissingFileAreRefused) {
    EXPECT_NE(error_of(write("", kOwner)).find("at least 16 characters"), std::string::npos);
    EXPECT_NE(error_of(write("short\n", kOwner)).find("at least 16 characters"), std::string::npos);
    EXPECT_NE(error_of(write("0123456789 abcdef\n", kOwner)).find("space or control"),
              std::string::npos);
    EXPECT_NE(error_of(dir_ / "none").find("none: No such file or directory"), std::string::npos);
    EXPECT_NE(error_of(dir_).find("not a regular file"), std::string::npos);
}

TEST(BearerToken, TakesOnlyTheBearerScheme) {
    EXPECT_EQ(bearer_token("Bearer abc"), "abc");
    EXPECT_EQ(bearer_token("bearer  abc "), "abc");
    EXPECT_EQ(bearer_token("BEARER abc"), "abc");
    EXPECT_FALSE(bearer_token("Basic abc"));
    EXPECT_FALSE(bearer_token("Bearer"));
    EXPECT_FALSE(bearer_token("Bearer "));
    EXPECT_FALSE(bearer_token("Bearerabc"));
    EXPECT_FALSE(bearer_token(""));
}

TEST(TokenMatches, OnlyTheSameBytes) {
    EXPECT_TRUE(token_matches("0123456789abcdef", "0123456789abcdef"));
    EXPECT_FALSE(token_matches("0123456789abcdef", "0123456789abcdeF"));
    EXPECT_FALSE(token_matches("0123456789abcdef", "0123456789abcde"));
    EXPECT_FALSE(token_matches("0123456789abcdef", "0123456789abcdef0"));
    EXPECT_FALSE(token_matches("0123456789abcdef", ""));
}

TEST(AdminHost, AddressLiteralsLocalhostAndTheConfiguredNameOnly) {
    EXPECT_TRUE(admin_host_allowed("127.0.0.1:9000", "127.0.0.1"));
    EXPECT_TRUE(admin_host_allowed("127.0.0.1", "127.0.0.1"));
    EXPECT_TRUE(admin_host_allowed("localhost:9000", "127.0.0.1"));
    EXPECT_TRUE(admin_host_allowed("LocalHost", "127.0.0.1"));
    EXPECT_TRUE(admin_host_allowed("[::1]:9000", "::1"));
    EXPECT_TRUE(admin_host_allowed("10.1.2.3:9000", "0.0.0.0"));
    EXPECT_TRUE(admin_host_allowed("admin.internal:9000", "admin.internal"));

    EXPECT_FALSE(admin_host_allowed("evil.example:9000", "127.0.0.1"));
    EXPECT_FALSE(admin_host_allowed("evil.example", "127.0.0.1"));
    EXPECT_FALSE(admin_host_allowed("127.0.0.1.nip.io", "127.0.0.1"));
    EXPECT_FALSE(admin_host_allowed("", "127.0.0.1"));
    EXPECT_FALSE(admin_host_allowed(":9000", "127.0.0.1"));
    EXPECT_FALSE(admin_host_allowed("127.0.0.1:90x", "127.0.0.1"));
    EXPECT_FALSE(admin_host_allowed("::1", "::1")) << "an IPv6 Host is bracketed";
    EXPECT_FALSE(admin_host_allowed("[::1", "::1"));
    EXPECT_FALSE(admin_host_allowed("[::1]x", "::1"));
    EXPECT_FALSE(admin_host_allowed("127.0.0.1 evil", "127.0.0.1"));
    EXPECT_FALSE(admin_host_allowed("a.internal", "admin.internal"));
}
