// Tests for consr/view.hpp and consr/traits.hpp: the core vocabulary.
#include <catch2/catch.hpp>

#include <consr/adapters/span.hpp>
#include <consr/view.hpp>

#include <type_traits>
#include <vector>

using consr::index_t;

TEST_CASE("strided_view is trivially copyable and small", "[view]") {
  STATIC_REQUIRE(std::is_trivially_copyable_v<consr::host_view<float, 2>>);
  STATIC_REQUIRE(std::is_trivially_copyable_v<consr::device_view<const double, 4>>);
  STATIC_REQUIRE(sizeof(consr::host_view<float, 1>) == 3 * sizeof(void*));
  STATIC_REQUIRE(!std::is_same_v<consr::host_view<float, 1>, consr::device_view<float, 1>>);
}

TEST_CASE("make_view gives row-major strides and element access", "[view]") {
  std::vector<int> buf(24);
  for (int i = 0; i < 24; ++i) buf[i] = i;
  auto v = consr::make_view(buf.data(), 2, 3, 4);
  REQUIRE(v.rank == 3);
  REQUIRE(v.size() == 24);
  REQUIRE(v.stride(0) == 12);
  REQUIRE(v.stride(1) == 4);
  REQUIRE(v.stride(2) == 1);
  REQUIRE(v.is_contiguous());
  REQUIRE(v(1, 2, 3) == 23);
  REQUIRE(v(0, 1, 0) == 4);
  consr::host_view<const int, 3> cv = v;  // const conversion
  REQUIRE(cv(1, 0, 1) == 13);
}

TEST_CASE("strided views: transposed, row, contiguity predicates", "[view]") {
  std::vector<float> buf(6);
  for (int i = 0; i < 6; ++i) buf[i] = float(i);
  // Column-major 2 x 3 (strides 1, 2): not contiguous row-major, no unit inner stride.
  auto t = consr::make_strided_view(buf.data(), std::array<index_t, 2>{2, 3}, std::array<index_t, 2>{1, 2});
  REQUIRE_FALSE(t.is_contiguous());
  REQUIRE_FALSE(t.has_unit_inner_stride());
  REQUIRE(t(1, 2) == 5.0f);
  REQUIRE(t(0, 1) == 2.0f);
  auto m = consr::make_view(buf.data(), 2, 3);
  auto r = m.row(1);
  REQUIRE(r.extent(0) == 3);
  REQUIRE(r[2] == 5.0f);
  // A dimension of extent 1 may carry any stride and still count as contiguous.
  auto one = consr::make_strided_view(buf.data(), std::array<index_t, 2>{1, 6}, std::array<index_t, 2>{999, 1});
  REQUIRE(one.is_contiguous());
}

TEST_CASE("rank-0 and empty views", "[view]") {
  float x = 3.0f;
  auto s = consr::make_view(&x);
  REQUIRE(s.size() == 1);
  REQUIRE(s() == 3.0f);
  auto e = consr::make_view(static_cast<float*>(nullptr), 0, 5);
  REQUIRE(e.empty());
  REQUIRE_NOTHROW(consr::detail::check_view(e, "f", "e"));
}

TEST_CASE("check_view and check_extent name the argument", "[view][errors]") {
  auto bad = consr::make_view(static_cast<float*>(nullptr), 3);
  try {
    consr::detail::check_view(bad, "consr::some_function", "token_logp");
    FAIL("no exception");
  } catch (const consr::error& e) {
    REQUIRE(e.function() == "consr::some_function");
    REQUIRE(e.argument() == "token_logp");
    REQUIRE_THAT(e.what(), Catch::Contains("token_logp") && Catch::Contains("null data pointer"));
  }
  float buf[4] = {};
  auto v = consr::make_view(buf, 4);
  REQUIRE_THROWS_WITH(consr::detail::check_extent(v, 0, 5, "consr::f", "labels", "one label per logits row"),
                      Catch::Contains("'labels'") && Catch::Contains("is 4 but must be 5"));
  auto cm = consr::make_strided_view(buf, std::array<index_t, 2>{2, 2}, std::array<index_t, 2>{1, 2});
  REQUIRE_THROWS_WITH(consr::detail::check_unit_inner_stride(cm, "consr::f", "logits"),
                      Catch::Contains("'logits'") && Catch::Contains("contiguous"));
  // consr::error is a std::invalid_argument.
  REQUIRE_THROWS_AS(consr::detail::check_contiguous(cm, "consr::f", "x"), std::invalid_argument);
}

TEST_CASE("check_no_broadcast: stride 0 is refused on a real output, accepted on an empty one", "[view][errors]") {
  float buf[6] = {};
  // A broadcast row: 3 x 2 positions over 2 floats.
  auto broadcast = consr::make_strided_view(buf, std::array<index_t, 2>{3, 2}, std::array<index_t, 2>{0, 1});
  REQUIRE_THROWS_WITH(consr::detail::check_no_broadcast(broadcast, "consr::f", "out"),
                      Catch::Contains("'out'") && Catch::Contains("stride 0"));
  // Extent 1 with stride 0 is fine (one element per position).
  auto single = consr::make_strided_view(buf, std::array<index_t, 2>{1, 6}, std::array<index_t, 2>{0, 1});
  REQUIRE_NOTHROW(consr::detail::check_no_broadcast(single, "consr::f", "out"));
  // Zero-size outputs with stride 0 on the other dimensions, as numpy lays out e.g.
  // np.broadcast_to(x, (0, 5)) (strides (0, 0)) or PyTorch's expand of an empty tensor: no element
  // can alias, so they are accepted.
  auto empty_rows = consr::make_strided_view(buf, std::array<index_t, 2>{0, 5}, std::array<index_t, 2>{0, 0});
  REQUIRE_NOTHROW(consr::detail::check_no_broadcast(empty_rows, "consr::f", "out"));
  auto empty_cols = consr::make_strided_view(static_cast<float*>(nullptr), std::array<index_t, 3>{4, 0, 3},
                                             std::array<index_t, 3>{0, 3, 0});
  REQUIRE_NOTHROW(consr::detail::check_no_broadcast(empty_cols, "consr::f", "out"));
}

TEST_CASE("as_view over std::vector, std::array and views", "[traits]") {
  std::vector<double> v = {1, 2, 3};
  auto vv = consr::as_view<1>(v, "v");
  STATIC_REQUIRE(std::is_same_v<decltype(vv), consr::host_view<double, 1>>);
  REQUIRE(vv[2] == 3.0);
  const std::vector<double>& cref = v;
  auto cv = consr::as_view(cref, "v");
  STATIC_REQUIRE(std::is_same_v<decltype(cv), consr::host_view<const double, 1>>);
  std::array<int, 4> a = {4, 5, 6, 7};
  REQUIRE(consr::as_view(a)[3] == 7);
  auto m = consr::make_view(v.data(), 1, 3);
  auto again = consr::as_view<2>(m);
  REQUIRE(again(0, 1) == 2.0);
  STATIC_REQUIRE(consr::has_tensor_traits_v<std::vector<float>>);
  STATIC_REQUIRE(!consr::has_tensor_traits_v<int>);
}
