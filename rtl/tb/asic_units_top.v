// Test-bench top for the ASIC arithmetic units: one simulator build covers them all.
// sel[i] routes the shared inputs to unit i only (the others see constant zeros, so an
// event-driven simulator does not evaluate them). Units: 0 add, 1 mul, 2 exp, 3 exp_alt,
// 4 recip, 5 recip_alt, 6 rsqrt, 7 rsqrt_alt, 8 gelu. The *_ALT parameters give a second,
// non-default instance of each parameterised unit (set by the test runner).
module asic_units_top #(
    parameter EXP_DEGREE_ALT  = 4,
    parameter RECIP_ITERS_ALT = 1,
    parameter RSQRT_ITERS_ALT = 1
) (
    input  wire        clk,
    input  wire        rst_n,
    input  wire        in_valid,
    input  wire [8:0]  sel,
    input  wire [31:0] a,
    input  wire [31:0] b,
    output wire        v_add, v_mul, v_exp, v_exp_alt, v_recip, v_recip_alt,
    output wire        v_rsqrt, v_rsqrt_alt, v_gelu,
    output wire [31:0] y_add, y_mul, y_exp, y_exp_alt, y_recip, y_recip_alt,
    output wire [31:0] y_rsqrt, y_rsqrt_alt, y_gelu
);
    wire [8:0]  iv = sel & {9{in_valid}};
    wire [31:0] a0 = sel[0] ? a : 32'd0, b0 = sel[0] ? b : 32'd0;
    wire [31:0] a1 = sel[1] ? a : 32'd0, b1 = sel[1] ? b : 32'd0;
    wire [31:0] a2 = sel[2] ? a : 32'd0, a3 = sel[3] ? a : 32'd0;
    wire [31:0] a4 = sel[4] ? a : 32'd0, a5 = sel[5] ? a : 32'd0;
    wire [31:0] a6 = sel[6] ? a : 32'd0, a7 = sel[7] ? a : 32'd0;
    wire [31:0] a8 = sel[8] ? a : 32'd0;
    fp32_add   u_add   (.clk(clk), .rst_n(rst_n), .in_valid(iv[0]), .a(a0), .b(b0), .out_valid(v_add), .y(y_add));
    fp32_mul   u_mul   (.clk(clk), .rst_n(rst_n), .in_valid(iv[1]), .a(a1), .b(b1), .out_valid(v_mul), .y(y_mul));
    fp32_exp   u_exp   (.clk(clk), .rst_n(rst_n), .in_valid(iv[2]), .a(a2), .out_valid(v_exp), .y(y_exp));
    fp32_exp   #(.DEGREE(EXP_DEGREE_ALT)) u_exp_alt
                       (.clk(clk), .rst_n(rst_n), .in_valid(iv[3]), .a(a3), .out_valid(v_exp_alt), .y(y_exp_alt));
    fp32_recip u_recip (.clk(clk), .rst_n(rst_n), .in_valid(iv[4]), .a(a4), .out_valid(v_recip), .y(y_recip));
    fp32_recip #(.ITERS(RECIP_ITERS_ALT)) u_recip_alt
                       (.clk(clk), .rst_n(rst_n), .in_valid(iv[5]), .a(a5), .out_valid(v_recip_alt), .y(y_recip_alt));
    fp32_rsqrt u_rsqrt (.clk(clk), .rst_n(rst_n), .in_valid(iv[6]), .a(a6), .out_valid(v_rsqrt), .y(y_rsqrt));
    fp32_rsqrt #(.ITERS(RSQRT_ITERS_ALT)) u_rsqrt_alt
                       (.clk(clk), .rst_n(rst_n), .in_valid(iv[7]), .a(a7), .out_valid(v_rsqrt_alt), .y(y_rsqrt_alt));
    fp32_gelu  u_gelu  (.clk(clk), .rst_n(rst_n), .in_valid(iv[8]), .a(a8), .out_valid(v_gelu), .y(y_gelu));
endmodule
