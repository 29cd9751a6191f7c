// FP32 adder unit for partial-sum reduction on the ASIC: y = a + b (see fp32_add_comb).
// One operation per cycle, latency 1: a, b sampled with in_valid at a rising edge appear
// on y with out_valid after that edge. y holds its value while in_valid is low.
module fp32_add (
    input  wire        clk,
    input  wire        rst_n,      // synchronous, active low: clears out_valid
    input  wire        in_valid,
    input  wire [31:0] a,
    input  wire [31:0] b,
    output reg         out_valid,
    output reg  [31:0] y
);
    wire [31:0] y_c;
    fp32_add_comb core (.a(a), .b(b), .y(y_c));
    always @(posedge clk) begin
        if (!rst_n) out_valid <= 1'b0;
        else        out_valid <= in_valid;
        if (in_valid) y <= y_c;
    end
endmodule
